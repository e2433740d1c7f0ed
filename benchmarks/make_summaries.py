"""Rebuild benchmarks/data/stdlib_summaries.jsonl: Python standard library modules to summarize.

Each record is ``{"id", "article", "summary"}``: the article is the module's source without its
docstring (the first ``ARTICLE_CHARS`` characters, cut at a line end), the summary the first
paragraph of the module docstring. Deterministic for a given Python version (the modules are read
from this interpreter's standard library, never imported)::

    python benchmarks/make_summaries.py            # writes benchmarks/data/stdlib_summaries.jsonl

Use it with ``layerskip benchmark --dataset custom_jsonl --data_path benchmarks/data/stdlib_summaries.jsonl
--prompt_field article --response_field summary --template '...{message}...'``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

MODULES = [
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "code", "codeop", "colorsys", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "difflib", "dis", "filecmp", "fileinput", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "getpass", "gettext", "glob", "gzip", "heapq", "hmac", "imaplib",
    "inspect", "ipaddress", "keyword", "linecache", "locale", "mailbox", "mimetypes", "netrc", "numbers", "opcode",
    "operator", "optparse", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "pstats", "py_compile",
    "queue", "quopri", "random", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib",
    "socketserver", "statistics", "string", "stringprep", "subprocess", "symtable", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "trace", "traceback", "types", "uuid",
    "warnings", "wave", "weakref", "webbrowser", "zipapp", "zipfile",
]
COUNT = 50
ARTICLE_CHARS = 2400
OUTPUT = Path(__file__).parent / "data" / "stdlib_summaries.jsonl"


def record(name: str) -> dict[str, str] | None:
    """The module's record, or None when it has no docstring paragraph of a usable length."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    source = Path(spec.origin).read_text(encoding="utf-8")
    tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    if not doc:
        return None
    summary = " ".join(doc.split("\n\n")[0].split())
    if not 20 <= len(summary) <= 400:
        return None
    node = tree.body[0]
    lines = source.splitlines(keepends=True)
    body = "".join(lines[: node.lineno - 1] + lines[node.end_lineno :]).strip() + "\n"
    article = body[:ARTICLE_CHARS]
    article = article[: article.rfind("\n") + 1] if len(body) > ARTICLE_CHARS else article
    return {"id": name, "article": article, "summary": summary}


def main() -> int:
    records = [r for r in map(record, MODULES) if r][:COUNT]
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"{len(records)} records from Python {sys.version.split()[0]}: {OUTPUT} ({OUTPUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
