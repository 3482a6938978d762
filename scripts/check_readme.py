"""Run the README's commands as written, so that the README cannot drift from what graftkit does.

Every fenced block of README.md whose language is bash/sh/shell/console or python is a command
block and carries a tag on the line just before its opening fence (blank lines between are allowed):

    <!-- run -->                 run it (bash with `set -e`, or python), in README order
    <!-- no-run: REASON -->      show it only; REASON says why (network, GPU, minutes, the install...)

Output examples use the language `text`; a block with no language is an error too (say what it is).
Run-tagged blocks share one temporary folder, prepared with the small data the README names:
`photos/` (two classes of generated images) and `new-photos/` (three images to predict), with the
cache (XDG_CACHE_HOME) inside it, so the user's ~/.cache is never touched. The `graft` and `python`
of the current environment run them; CI runs this after installing the package (`.ci/run`).

    python scripts/check_readme.py            # run the run-tagged blocks (stops at the first failure)
    python scripts/check_readme.py --list     # each block's line, tag and first line; checks the tags only
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND_LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "bash",
                     "python": "python", "py": "python"}
OUTPUT_LANGUAGES = {"text", "output"}
TAG = re.compile(r"^<!--\s*(run|no-run)\s*(?::\s*(.*?))?\s*-->$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
BLOCK_TIMEOUT_S = 900


@dataclass
class Block:
    line: int            # README line number of the opening fence
    language: str        # "bash", "python", or an output language
    code: str
    tag: str | None      # "run", "no-run", or None (untagged)
    reason: str = ""

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "(empty)")

    @property
    def is_command(self) -> bool:
        return self.language in ("bash", "python")


def parse(text: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown text, and the problems with their tags (README line numbers)."""
    lines = text.splitlines()
    blocks, problems, i = [], [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, language = match.group(1), match.group(2).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            problems.append(f"README.md:{i + 1}: a fenced block that is never closed")
            break
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        tag = TAG.match(previous)
        block = Block(i + 1, COMMAND_LANGUAGES.get(language, language), "\n".join(lines[i + 1:end]),
                      tag.group(1) if tag else None, (tag.group(2) or "") if tag else "")
        where = f"README.md:{block.line}: block starting '{block.first_line}'"
        if not language:
            problems.append(f"{where} has no language: use bash or python (with a run/no-run tag), "
                            f"or text for output")
        elif block.is_command and block.tag is None:
            problems.append(f"{where} has no tag: put '<!-- run -->' or '<!-- no-run: REASON -->' on the "
                            f"line before it")
        elif block.is_command and block.tag == "no-run" and not block.reason:
            problems.append(f"{where} is tagged no-run without a reason: '<!-- no-run: REASON -->'")
        elif not block.is_command and language not in OUTPUT_LANGUAGES:
            problems.append(f"{where} has language {language!r}: use bash, python or text")
        elif not block.is_command and block.tag is not None:
            problems.append(f"{where} is output ({language}) but tagged {block.tag}: only commands are run")
        blocks.append(block)
        i = end + 1
    return blocks, problems


def prepare(workdir: Path) -> None:
    """The small data the README's commands name: `photos/` (two classes) and `new-photos/`."""
    from PIL import Image

    from graftkit.data.synthetic import write_color_folder

    write_color_folder(workdir / "photos", {"ants": (190, 120, 50), "bees": (60, 70, 170)},
                       per_class=15, image_size=64)
    (workdir / "new-photos").mkdir()
    for i, name in enumerate(["IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg"]):
        source = workdir / "photos" / ("ants" if i % 2 == 0 else "bees") / f"{i:03d}.png"
        Image.open(source).convert("RGB").save(workdir / "new-photos" / name, quality=95)


def run_block(block: Block, workdir: Path, env: dict) -> subprocess.CompletedProcess:
    script = workdir / f".readme-block-{block.line}.{'py' if block.language == 'python' else 'sh'}"
    script.write_text(block.code + "\n")
    command = [sys.executable, str(script)] if block.language == "python" else ["bash", "-e", str(script)]
    try:
        return subprocess.run(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(command, 124, out + f"\n(timed out after {BLOCK_TIMEOUT_S} s)")
    finally:
        script.unlink(missing_ok=True)


def run_all(blocks: list[Block], workdir: Path) -> int:
    if shutil.which("graft") is None:
        print("check_readme: no 'graft' command on PATH: install graftkit first (pip install -e .)")
        return 2
    prepare(workdir)
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / ".cache"), "MPLBACKEND": "Agg",
           "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    runs = [b for b in blocks if b.tag == "run"]
    for number, block in enumerate(runs, 1):
        t0 = time.monotonic()
        result = run_block(block, workdir, env)
        seconds = time.monotonic() - t0
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-40:])
            print(f"FAILED README.md:{block.line}: block starting '{block.first_line}' exited with "
                  f"{result.returncode} after {seconds:.1f}s; its output (last 40 lines):\n{tail}\n"
                  f"(stopped here: later blocks build on this one; folder: {workdir})")
            return 1
        print(f"ok  {number}/{len(runs)}  README.md:{block.line:<4} {seconds:6.1f}s  {block.first_line}", flush=True)
    skipped = len([b for b in blocks if b.tag == "no-run"])
    print(f"README: {len(runs)} blocks ran in {time.monotonic() - started:.0f}s; {skipped} tagged no-run")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="Print each block's tag; check the tags only.")
    parser.add_argument("--readme", type=Path, default=README, help="Default: the repository's README.md.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder (its path is printed).")
    args = parser.parse_args(argv)
    blocks, problems = parse(args.readme.read_text(encoding="utf-8"))
    if args.list:
        for b in blocks:
            tag = b.tag + (f": {b.reason}" if b.reason else "") if b.tag else ("(output)" if not b.is_command else "UNTAGGED")
            print(f"README.md:{b.line:<4} {b.language:<7} {tag:<42} {b.first_line}")
    for problem in problems:
        print(f"error: {problem}")
    if problems or args.list:
        return 1 if problems else 0
    workdir, status = Path(tempfile.mkdtemp(prefix="graftkit-readme-")), 1
    try:
        status = run_all(blocks, workdir)
    finally:
        if args.keep or status != 0:  # a failed run's folder stays, to look into
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
