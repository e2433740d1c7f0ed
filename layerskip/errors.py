"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

import json
from pathlib import Path


class LayerskipError(Exception):
    """An error caused by user input or the environment (bad flag, missing file, offline hub).

    The command-line entry point catches it and prints ``error: <message>`` without a traceback.
    """


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
