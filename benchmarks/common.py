"""Shared helpers for the benchmark scripts (not part of the package, not tests)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("GRAFTKIT_DATASETS", ROOT.parent / "shared" / "datasets"))


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        sys.exit(f"dataset '{path}' not found: set GRAFTKIT_DATASETS to the folder holding it")
    return path


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run a whole process; return its wall time (interpreter start and imports included)."""
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return seconds, result


def graft(*args: str) -> list[str]:
    return [sys.executable, "-m", "graftkit.cli", *args]


def fresh_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"graftkit-bench-{prefix}-"))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def children_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def interval(values: list[float]) -> str:
    """``mean [low, high]``: the 95 % Student-t interval over ``values`` (the mean twice for one value)."""
    from graftkit.report.summary import mean_interval

    m = mean_interval(values)
    low, high = m["interval"] if m["interval"] else (m["mean"], m["mean"])
    return f"{m['mean']:.4f} [{low:.4f}, {high:.4f}]"


def table(rows: list[list], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The machine's peak arithmetic rate, measured: a large fp32 matmul, best of ``repeats``."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8", "amx_tile", "asimd", "sve")


def machine() -> str:
    """One line naming the CPU, its core count and SIMD extensions (from /proc/cpuinfo where it exists)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = " ".join(f for f in SIMD_FLAGS if f in flags) or "unknown"
    return f"CPU: {model} · {os.cpu_count()} logical cores · SIMD: {simd}"
