"""The package's shape: names stay inside their modules, and ``graft --version``/``--help`` start without
torch. (Layers and cycles: the import-linter contracts in pyproject.toml, run by ``lint-imports``.)"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import graftkit

SRC = Path(graftkit.__file__).resolve().parent  # the package under test


def _module_name(path: Path) -> tuple[str, str]:
    """(module, the package its relative imports start from)."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    name = ".".join(parts)
    return name, name.rsplit(".", 1)[0]


def test_no_module_imports_another_modules_private_names():
    crossings = []
    for path in sorted(SRC.rglob("*.py")):
        module, package = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("graftkit") or target == module:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    crossings.append(f"{module}: from {target} import {alias.name}")
    assert not crossings, crossings


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_do_not_import_torch(args):
    """A real process, as a user starts it: what it loads is the point (`benchmarks/startup.py` times it)."""
    code = (f"import sys\nsys.argv = ['graft', *{args!r}]\nfrom graftkit.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
            "heavy = ('torch', 'torchvision', 'timm', 'sklearn', 'matplotlib', 'safetensors')\n"
            "print('loaded:', sorted(m for m in heavy if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "loaded: []"
    assert ("graftkit 0." in result.stdout) if args == ["--version"] else ("train" in result.stdout)


def test_the_package_root_loads_its_names_on_first_use():
    import graftkit
    from graftkit.engine import fit
    from graftkit.predict import ImageClassifier

    assert graftkit.fit is fit and graftkit.ImageClassifier is ImageClassifier
    assert set(graftkit.__all__) <= set(dir(graftkit))
    for name in graftkit.__all__:  # every public name resolves
        getattr(graftkit, name)
    with pytest.raises(AttributeError):
        graftkit.no_such_name  # noqa: B018


def test_loading_and_predicting_leave_the_process_allocator_alone(session_run):
    """mallopt is process-wide: only graft's entry point (or a caller, explicitly) tunes it."""
    import graftkit
    from graftkit import hardware

    def calls() -> int:
        info = hardware.tune_cpu_allocator.cache_info()
        return info.hits + info.misses

    before = calls()
    model = graftkit.load(session_run)
    image = next((session_run.parent / "splits" / "val" / "red").glob("*.png"))
    assert model.predict([image])[0].label in model.classes
    model.evaluate(session_run.parent / "splits")
    assert calls() == before
