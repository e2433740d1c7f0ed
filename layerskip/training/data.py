"""Training corpora: files on disk (a directory, a glob, JSONL with a text field) or the Python
standard library itself, tokenized into one flat stream of ids.

Batches are a pure function of ``(seed, step, micro_step, rank)``: random windows of the stream
drawn from a generator seeded by those numbers, so a resumed run sees exactly the batches the
uninterrupted run would have, with no sampler state to save.
"""

from __future__ import annotations

import glob
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from layerskip.errors import LayerskipError
from layerskip.files.jsonl import parse_lines

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".json", ".c", ".h", ".js", ".ts", ".java", ".go", ".rs", ".sh")
STDLIB = "stdlib"
STDLIB_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files() -> list[Path]:
    """The standard library's ``*.py`` files (located through sysconfig), test packages excluded,
    sorted by path relative to the library root: the same list on every install of one version."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p for p in root.rglob("*.py")
        if not STDLIB_EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])
        and not p.name.startswith("test_")
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@dataclass(frozen=True)
class Document:
    source: str
    text: str


def _read_jsonl(path: Path, field: str) -> Iterable[Document]:
    for number, record in parse_lines(path):
        if not isinstance(record, dict) or field not in record:
            raise LayerskipError(f"{path}:{number}: expected a JSON object with a {field!r} field")
        if not isinstance(record[field], str):
            raise LayerskipError(f"{path}:{number}: field {field!r} is not a string")
        yield Document(f"{path}:{number}", record[field])


def corpus_documents(spec: str, text_field: str = "text") -> list[Document]:
    """Documents of ``spec``: ``stdlib``, a directory (recursively), a glob, or a ``.jsonl`` file.

    Files are read in sorted order; undecodable files are skipped.
    """
    if spec == STDLIB:
        paths = stdlib_files()
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            paths = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + (".jsonl",))
        elif path.is_file():
            paths = [path]
        else:
            paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not paths:
        raise LayerskipError(f"corpus {spec!r}: no files found")
    documents: list[Document] = []
    for p in paths:
        if p.suffix == ".jsonl":
            documents.extend(_read_jsonl(p, text_field))
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            documents.append(Document(str(p), text))
    if not documents:
        raise LayerskipError(f"corpus {spec!r}: no readable text")
    return documents


def split_documents(documents: list[Document], every: int = 50) -> tuple[list[Document], list[Document]]:
    """Deterministic train/validation split: every ``every``-th document is held out."""
    train = [d for i, d in enumerate(documents) if i % every != every - 1]
    val = [d for i, d in enumerate(documents) if i % every == every - 1] or documents[-1:]
    return train, val


def document_separator(tokenizer) -> int:
    """The EOS id that ends each document in a token stream."""
    if tokenizer.eos_token_id is None:
        raise LayerskipError("the tokenizer has no EOS token to separate documents")
    return tokenizer.eos_token_id


def tokenize_stream(documents: list[Document], tokenizer, eos_id: int) -> torch.Tensor:
    """All documents as one ``[n_tokens]`` int32 stream, each ended by EOS (no BOS inside)."""
    ids: list[int] = []
    texts = [d.text for d in documents]
    for start in range(0, len(texts), 256):
        encoded = tokenizer(texts[start : start + 256], add_special_tokens=False)["input_ids"]
        for doc in encoded:
            ids.extend(doc)
            ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.int32)


def batch_generator(seed: int, step: int, micro_step: int, rank: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + step) * 1_009 + micro_step) * 101 + rank)
    return g


def random_spans(stream: torch.Tensor, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` spans of ``length`` consecutive ids ``[count, length]`` (int64) at random offsets."""
    if stream.numel() <= length:
        raise LayerskipError(f"corpus has {stream.numel()} tokens, fewer than one window of {length}")
    starts = torch.randint(0, stream.numel() - length, (count,), generator=generator)
    return torch.stack([stream[s : s + length] for s in starts.tolist()]).long()


def random_windows(stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets ``[batch, seq_len]`` (int64) from random offsets of the stream."""
    windows = random_spans(stream, batch_size, seq_len + 1, generator)
    return windows[:, :-1], windows[:, 1:]


def sequential_windows(stream: torch.Tensor, batch_size: int, seq_len: int, max_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation batches: consecutive windows from the start of the stream."""
    out = []
    n = min(max_batches * batch_size, (stream.numel() - 1) // seq_len)
    for b in range(0, n, batch_size):
        rows = [stream[i * seq_len : i * seq_len + seq_len + 1].long() for i in range(b, min(b + batch_size, n))]
        w = torch.stack(rows)
        out.append((w[:, :-1], w[:, 1:]))
    return out
