"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

import json
import re
from pathlib import Path
from typing import Mapping


class LayerskipError(Exception):
    """An error caused by user input or the environment (a bad setting, missing file, offline hub).

    Messages name settings in the library's terms, the parameter name in backticks (`` `exit_layer` 14
    outside 1..11``); the command-line entry point prints the message as one line, each such name
    spelled as the command's flag (``--exit_layer``; ``named_as_flags``), without a traceback.
    """


NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def named_as_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each backticked setting name that ``flags`` maps (name -> flag) spelled as the flag."""
    return NAME.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


def read_json_object(path: "str | Path", label: str, missing: str) -> dict:
    """Read a JSON file that must hold an object; any problem becomes one ``LayerskipError`` line.

    ``label`` prefixes the corrupt-file messages; ``missing`` is the whole message for a missing file.
    """
    file = Path(path)
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise LayerskipError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LayerskipError(f"{label}: invalid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise LayerskipError(f"{label}: expected a JSON object")
    return raw
