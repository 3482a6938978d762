"""Load on `graft serve`: server-side batching on and off, side by side in one run.

Starts its own server (127.0.0.1 only, a free port) for each mode, sends N requests of one image
each at concurrency C (after a short warm-up), stops the server, and prints errors, p50/p95
latency, images/s and the mean forward-pass batch. Bounded: every request has a timeout and the
whole run a deadline; the servers are stopped whatever happens.

    python benchmarks/serve_load.py [--run RUN_DIR] [--requests 500] [--concurrency 16] [--append BENCHMARKS.md]

Without --run it uses /tmp/graftkit-calibration-ood/hymenoptera (benchmarks/calibration_ood.py)
or trains a feature-extraction run on hymenoptera (one epoch) under /tmp.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, graft, machine, run_timed, table  # noqa: E402

DEADLINE_S = 900


def default_run() -> Path:
    shared = Path("/tmp/graftkit-calibration-ood/hymenoptera")
    if (shared / "metrics.json").is_file():
        return shared
    out = Path("/tmp/graftkit-serve-load-run")
    if not (out / "metrics.json").is_file():
        run_timed(graft("train", str(dataset("hymenoptera")), "--strategy", "feature-extraction", "--epochs", "1",
                        "--out", str(out), "--quiet"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(client, url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}")
        try:
            if (await client.get(f"{url}/health", timeout=2)).status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    sys.exit("the server did not start in time")


async def drive(url: str, bodies: list[tuple[str, bytes]], requests: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def worker() -> None:
            for i in counter:
                name, data = bodies[i % len(bodies)]
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/predict", files=[("files", (name, data, "image/jpeg"))])
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:100]}")
                except Exception as exc:  # a timeout or a dropped connection counts as an error
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        health = (await client.get(f"{url}/health")).json()
    return {"latencies": latencies, "errors": errors, "seconds": seconds, "health": health}


def start_server(run: Path, batching: bool) -> tuple[str, subprocess.Popen]:
    port = free_port()
    command = graft("serve", str(run), "--host", "127.0.0.1", "--port", str(port),
                    *([] if batching else ["--no-batching"]))
    return f"http://127.0.0.1:{port}", subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.DEVNULL, env=os.environ.copy())


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def measure(run: Path, bodies, requests: int, concurrency: int, rounds: int) -> dict[bool, dict]:
    """Both servers up at once (the idle one costs nothing); the modes take turns, ``rounds`` times,
    so that a change in the machine's load hits both alike."""
    import httpx

    servers = {batching: start_server(run, batching) for batching in (True, False)}
    results = {b: {"latencies": [], "errors": [], "seconds": 0.0, "passes": 0} for b in servers}
    try:
        async with httpx.AsyncClient() as client:
            for url, process in servers.values():
                await wait_ready(client, url, process)
        for url, _ in servers.values():
            await drive(url, bodies, 2 * concurrency, concurrency)  # warm-up: first passes, allocator, caches
        for r in range(rounds):
            for batching, (url, _) in servers.items():
                count = requests // rounds + (1 if r < requests % rounds else 0)
                before = (await drive(url, bodies, 0, 1))["health"]["forward_passes"]
                part = await drive(url, bodies, count, concurrency)
                total = results[batching]
                total["latencies"] += part["latencies"]
                total["errors"] += part["errors"]
                total["seconds"] += part["seconds"]
                total["passes"] += part["health"]["forward_passes"] - before
        return results
    finally:
        for _, process in servers.values():
            stop_server(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="turns per mode (the requests are split over them)")
    parser.add_argument("--append", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()
    run = args.run or default_run()
    config = json.loads((run / "config.json").read_text())
    images = sorted(p for p in (Path(config["data_dir"]) / "val").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    bodies = [(p.name, p.read_bytes()) for p in images[:64]]
    backbone = json.loads((run / "model.json").read_text())["backbone"]
    print(machine(), flush=True)
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results = asyncio.run(asyncio.wait_for(measure(run, bodies, args.requests, args.concurrency, args.rounds),
                                           DEADLINE_S))
    rows = []
    for batching, result in results.items():
        ms = np.array(result["latencies"]) * 1000
        rows.append(["on (≤ 10 ms wait, ≤ 32 images)" if batching else "off (--no-batching)", len(ms),
                     len(result["errors"]), f"{np.percentile(ms, 50):.0f}", f"{np.percentile(ms, 95):.0f}",
                     f"{len(ms) / result['seconds']:.1f}", f"{len(ms) / max(result['passes'], 1):.1f}"])
        print(rows[-1], flush=True)
        if result["errors"]:
            print("errors:", result["errors"][:5])
    ratio = float(rows[0][5]) / float(rows[1][5])
    text = "\n\n".join([
        f"`python benchmarks/serve_load.py` · {backbone} ({run.name}) · {args.requests} requests of one image at "
        f"concurrency {args.concurrency} on 127.0.0.1, the modes taking turns ({args.rounds} rounds) · client and "
        f"server on the same machine · load average before/after: {load_before} / {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        f"\n\n{machine()}",
        table(rows, ["server-side batching", "requests", "errors", "p50 ms", "p95 ms", "images/s",
                     "images per forward pass"]),
        f"Batching on / off: {ratio:.2f}x images/s.",
    ])
    print(text)
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
