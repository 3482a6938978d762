"""Writing files so that a crash never leaves half of one."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import CheckpointError, ConfigError


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new, exclusive temp file beside ``name``, created with mode 0666 less the umask (as ``open``
    does), so the renamed file can be shared as the user's other files can. ``tempfile.mkstemp``
    would make every run file 0600."""
    while True:
        tmp = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so a crash never leaves half a file.
    The file gets the mode any new file gets (0644 under umask 022)."""
    tmp = None
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path.parent, path.name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"could not write '{path}' ({exc.strerror or exc}); any previous version "
                              f"is intact. Free disk space or pass a writable --out, then continue "
                              f"with --resume.") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def refuse_out_inside_data(out: Path, data_dir: Path, flag: str = "--out") -> None:
    """An output folder at or below the data folder would be read as a class by the next scan."""
    out_real, data_real = Path(out).resolve(), Path(data_dir).resolve()
    if out_real == data_real or data_real in out_real.parents:
        raise ConfigError(f"{flag} '{out}' ({out_real}) is inside DATA_DIR '{data_dir}' ({data_real}): the next "
                          f"scan would read it as a class. Pass an {flag} outside DATA_DIR.")


def refuse_used_folder(out: Path, command: str) -> None:
    """``command`` writes a new folder: refuse one that holds anything (another run, other files)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; {command} writes a folder. Pass a new --out.")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        what = ("a run" if {"metrics.json", "checkpoint.pt", "model.json", "config.json"} & set(held) else
                f"files ({', '.join(held[:3])}{' ...' if len(held) > 3 else ''})")
        raise ConfigError(f"--out '{out}' already holds {what}; {command} writes a new folder: pass another "
                          f"--out (nothing was written).")
