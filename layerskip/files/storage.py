"""Where layerskip keeps what it downloads or converts, and how it writes it without half-states.

Everything lives under ``$LAYERSKIP_HOME`` (default ``~/.cache/layerskip``): fetched models in
``models/NAME``, GGUF files converted to Hugging Face checkpoints in ``gguf/STEM-KEY``. A
directory is built under a temporary name beside its destination and renamed into place only
when complete, so a cut run never leaves a destination that looks finished but is not.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable

PARTIAL = ".partial-"


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    fsync_path(tmp)
    os.replace(tmp, path)


def layerskip_home() -> Path:
    """``$LAYERSKIP_HOME``, else ``~/.cache/layerskip``."""
    return Path(os.environ.get("LAYERSKIP_HOME") or Path.home() / ".cache" / "layerskip").expanduser()


def status(message: str) -> None:
    """One progress line on stderr (stdout stays for results)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(dest: Path) -> None:
    """Delete the build directories of ``dest`` left behind by runs that were killed."""
    for leftover in dest.parent.glob(f".{dest.name}{PARTIAL}*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def build_directory(dest: Path, build: Callable[[Path], None]) -> Path:
    """``dest``, built by ``build(tmp)`` into a fresh ``tmp`` beside it and renamed into place.

    An existing ``dest`` is returned as it is: only complete builds are ever renamed in. If
    ``build`` fails, or another process finishes ``dest`` first, the temporary directory is removed.
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(dest)
    tmp = dest.parent / f".{dest.name}{PARTIAL}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
