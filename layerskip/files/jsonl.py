"""JSON Lines files: reading them line by line, and the cut last line a crash leaves behind.

``parse_lines`` reads input data (datasets, corpora): every non-blank line must be JSON.
``read_records`` reads a file this project appends to (sample logs, training logs, generated
corpora): a last line cut short by a crash (no newline, or not JSON) is cut off the file so appending
continues cleanly. ``keep_records`` rewrites such a file with only the records a resumed run keeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from layerskip.errors import LayerskipError
from layerskip.files.storage import atomic_write


def parse_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line; a line that is not UTF-8 or not JSON is one
    ``LayerskipError`` naming ``path:line``."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise LayerskipError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise LayerskipError(f"{path}:{number}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise LayerskipError(f"{path}:{number}: invalid JSON ({exc.msg})") from None


def read_records(path: Path, what: str = "record") -> list[Any]:
    """The complete records of an appended file (none if it does not exist). A cut last line is
    removed from the file; a bad line anywhere else is an error naming it (``corrupt {what}``)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    records = []
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8")
            value = json.loads(text) if text.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            if number != len(lines):
                raise LayerskipError(f"{path}:{number}: corrupt {what}") from None
            value = None
        if number == len(lines) and (not raw.endswith(b"\n") or (value is None and raw.strip())):
            with path.open("r+b") as handle:  # the write a crash cut short
                handle.truncate(len(data) - len(raw))
            break
        if value is not None:
            records.append(value)
    return records


def write_records(path: Path, records: list[Any]) -> None:
    """Replace ``path`` with ``records``, one JSON line each, atomically."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


def keep_records(path: Path, keep: Callable[[Any], bool], what: str = "record") -> None:
    """Rewrite ``path`` with only its complete records that ``keep`` accepts (nothing when it has none to drop)."""
    records = read_records(path, what)
    kept = [r for r in records if keep(r)]
    if len(kept) != len(records):
        write_records(path, kept)
