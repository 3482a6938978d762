"""The README's command blocks are all tagged run / no-run (``scripts/check_readme.py --list``; the
run-tagged ones run in `.ci/run`'s README step), its test line is `.ci/run`'s, and it stays short."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_readme.py"


def _checker():
    """scripts/check_readme.py as a module (it is a script, not part of the package)."""
    if "check_readme" not in sys.modules:
        spec = importlib.util.spec_from_file_location("check_readme", SCRIPT)
        sys.modules["check_readme"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(sys.modules["check_readme"])
    return sys.modules["check_readme"]


def test_every_readme_command_block_is_tagged():
    result = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    tags = [line.split()[2] for line in result.stdout.splitlines()]
    assert "UNTAGGED" not in tags and "run" in tags and "no-run:" in tags


def test_readme_test_line_is_the_one_ci_runs():
    ci_line = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                   if line.startswith("python3 -m venv"))
    command = ci_line.split(" || status=")[0]
    assert command == ("python3 -m venv .venv && . .venv/bin/activate && pip install -q -e \".[dev]\" "
                       "&& lint-imports && python -m pytest -q")
    readme = (ROOT / "README.md").read_text()
    assert f"\n{command}\n" in readme
    assert "\npython3 -m venv .venv && . .venv/bin/activate && pip install . && graft demo\n" in readme


def test_readme_is_at_most_half_its_former_length():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 294 and len(text.encode()) <= 20_500  # was 588 lines, 41,008 bytes


BAD = """intro
```bash
graft untagged
```

<!-- no-run: -->
```bash
graft no reason
```

<!-- run -->
```text
output, tagged
```

```
no language
```
"""


def test_tag_problems_name_the_block_and_its_line():
    blocks, problems = _checker().parse(BAD)
    assert [b.line for b in blocks] == [2, 7, 12, 16]
    assert problems == [
        "README.md:2: block starting 'graft untagged' has no tag: put '<!-- run -->' or "
        "'<!-- no-run: REASON -->' on the line before it",
        "README.md:7: block starting 'graft no reason' is tagged no-run without a reason: '<!-- no-run: REASON -->'",
        "README.md:12: block starting 'output, tagged' is output (text) but tagged run: only commands are run",
        "README.md:16: block starting 'no language' has no language: use bash or python (with a run/no-run "
        "tag), or text for output",
    ]


@pytest.mark.skipif(shutil.which("graft") is None, reason="needs the installed graft command")
def test_run_blocks_share_the_prepared_folder_and_a_failure_names_its_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- run -->\n```bash\nls photos/ants | wc -l > count.txt\n```\n\n"
                      "<!-- no-run: GPU -->\n```bash\nexit 9\n```\n\n"
                      "<!-- run -->\n```python\nfrom pathlib import Path\n"
                      "assert Path('count.txt').read_text().strip() == '15'\n"
                      "assert len(list(Path('new-photos').iterdir())) == 3\n```\n\n"
                      "<!-- run -->\n```bash\necho before\nfalse\necho never\n```\n")
    assert _checker().main(["--readme", str(readme)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"ok  1/3  README.md:2 .* ls photos/ants", out)
    assert re.search(r"ok  2/3  README.md:12 .* from pathlib import Path", out)
    assert "FAILED README.md:19: block starting 'echo before' exited with 1" in out
    assert "before" in out and "never" not in out
    kept = Path(re.search(r"kept (\S+)", out).group(1))
    assert (kept / "photos" / "bees").is_dir()
    shutil.rmtree(kept)
