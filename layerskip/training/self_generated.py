"""A corpus of the model's own greedy continuations, for sequence-level self-distillation.

Greedy self-speculative decoding accepts a draft token when the exit layer's argmax equals the
full model's argmax *on the text the full model itself generates*. Training early exits on a
human corpus teaches them the corpus, and the better the full model gets there, the further its
own greedy continuations can drift from what its middle layers predict. This module builds the
text acceptance is actually measured on: prefixes of the training corpus (seeded random windows
of its training split) continued greedily by the full model (``generate_many``, batched), and written to JSONL as
they are produced. ``layerskip train --model M --corpus that.jsonl --distill a`` then trains the
exits on it (sequence-level knowledge distillation, Kim & Rush 2016, applied to the model's own
early exits as in Kangaroo, Liu et al. 2024, and Medusa-2's self-distillation, Cai et al. 2024).

Records: ``{"text": prefix + continuation, "prefix_tokens": P, "index": i}``. The prefixes are a
pure function of ``(corpus, tokenizer, seed, prefix_tokens)``, so an interrupted run resumes by
skipping the records already in the file; ``claim_output`` keeps the run's fingerprint beside the
file and refuses to continue a file written with other settings, or any file it did not write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from layerskip.errors import LayerskipError, read_json_object
from layerskip.files.jsonl import read_records
from layerskip.evaluation.fingerprint import differences, normalized
from layerskip.decoding.chat import require_chat_template, single_turn
from layerskip.decoding.loop import generate_many
from layerskip.decoding.settings import GenerationConfig
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.training import data as corpus
from layerskip.files.storage import atomic_write
from layerskip.validation import writable_file


def check_sizes(**sizes: int) -> None:
    """One error line naming the first size below 1."""
    for name, value in sizes.items():
        if value < 1:
            raise LayerskipError(f"--{name} must be >= 1, got {value}")


def corpus_prefixes(stream: torch.Tensor, count: int, prefix_tokens: int, seed: int) -> torch.Tensor:
    """``count`` windows of ``prefix_tokens`` ids ``[count, prefix_tokens]`` at seeded random offsets."""
    return corpus.random_spans(stream, count, prefix_tokens, torch.Generator().manual_seed(seed))


def existing_records(path: Path) -> int:
    """Complete records already in ``path`` (a trailing partial line is dropped); each must be
    the JSON object of record i on line i."""
    records = read_records(path, "record of a self-generated corpus")
    for number, record in enumerate(records):
        if not isinstance(record, dict) or record.get("index") != number:
            raise LayerskipError(f"{path}:{number + 1}: not record {number} of a self-generated corpus")
    return len(records)


RUN_FORMAT = "layerskip-self-generate/1"


def run_file(output: Path) -> Path:
    """Where the settings of the run that writes ``output`` are kept."""
    return output.with_name(output.name + ".run.json")


def claim_output(output: Path, fingerprint: dict[str, Any]) -> int:
    """Records already in ``output`` written by a run with this ``fingerprint`` (0 for a new
    file, whose run file is created now). Any other existing file is refused, never appended to."""
    meta = run_file(output)
    fingerprint = normalized(fingerprint)
    if meta.exists():
        doc = read_json_object(meta, f"`output` {output}: corrupt {meta.name}", "")
        if doc.get("format") != RUN_FORMAT:
            raise LayerskipError(f"`output` {output}: {meta.name} was not written by layerskip self-generate; choose another `output`")
        if normalized(doc.get("fingerprint")) != fingerprint:
            raise LayerskipError(f"`output` {output} was written with other settings ({differences(doc.get('fingerprint') or {}, fingerprint)}); "
                                 "continue it with its own settings, or choose another `output`")
        return existing_records(output)
    if output.exists():
        raise LayerskipError(f"`output` {output}: exists and was not written by layerskip self-generate (no {meta.name}); "
                             "choose another `output`")
    writable_file(output, "`output`")
    atomic_write(meta, json.dumps({"format": RUN_FORMAT, "fingerprint": fingerprint}, indent=2) + "\n")
    return 0


def training_prefixes(
    tokenizer, corpus_spec: str, num_sequences: int, prefix_tokens: int, seed: int, text_field: str = "text"
) -> torch.Tensor:
    """``[num_sequences, prefix_tokens]`` prefixes from the training split of ``corpus_spec``
    (``layerskip.training.data``'s split, so validation documents stay unseen)."""
    check_sizes(num_sequences=num_sequences, prefix_tokens=prefix_tokens)
    train_docs, _ = corpus.split_documents(corpus.corpus_documents(corpus_spec, text_field))
    stream = corpus.tokenize_stream(train_docs, tokenizer, corpus.document_separator(tokenizer))
    return corpus_prefixes(stream, num_sequences, prefix_tokens, seed)


def prompt_prefixes(
    tokenizer, path: str, num_sequences: int, text_field: str = "text", chat: bool = False
) -> list[list[int]]:
    """The first ``num_sequences`` records of the JSONL file ``path``, each ``text_field`` tokenized
    as the harness tokenizes a prompt: whole prompts (e.g. function headers with their docstrings)
    continued as they are, of any lengths. With ``chat``, each text is the user turn of a new
    conversation rendered by the tokenizer's chat template (ending with the assistant's generation
    prompt), so the continuation is the model's own answer to it."""
    check_sizes(num_sequences=num_sequences)
    if chat:
        require_chat_template(tokenizer)
    prompts = []
    for number, record in enumerate(read_records(Path(path), "prompt record")[:num_sequences], 1):
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise LayerskipError(f"`prompts` {path}:{number}: no text in field {text_field!r}")
        prompts.append(single_turn(tokenizer, text) if chat else tokenizer(text)["input_ids"])
    if not prompts:
        raise LayerskipError(f"`prompts` {path}: no records")
    return prompts


def write_self_generated_corpus(
    model: LlamaForCausalLM,
    tokenizer,
    prefixes: torch.Tensor | list[list[int]],
    output: Path,
    new_tokens: int,
    batch_size: int,
    text_field: str = "text",
    on_batch: Callable[[int], None] | None = None,
    stop_token_ids: frozenset[int] = frozenset(),
) -> int:
    """Continue each of ``prefixes`` (``[N, P]``, or N token lists of any lengths) and write record i
    for row i to ``output``, skipping the records already there. ``on_batch(n)`` is called after each
    batch of n records is written. Returns the number of records in the file. A continuation ends at
    its first token of ``stop_token_ids`` (kept), as decoding with those stop tokens would.
    """
    check_sizes(new_tokens=new_tokens, batch_size=batch_size)
    rows_all = prefixes.tolist() if isinstance(prefixes, torch.Tensor) else [list(p) for p in prefixes]
    total = len(rows_all)
    config = GenerationConfig(max_steps=new_tokens, stop_token_ids=tuple(sorted(stop_token_ids)))
    done = existing_records(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a", encoding="utf-8") as handle:
        for first in range(done, total, batch_size):
            rows = rows_all[first : first + batch_size]
            results, _ = generate_many(model, rows, config)
            for offset, (prefix, result) in enumerate(zip(rows, results)):
                new = result.token_ids
                text = tokenizer.decode(prefix + new, skip_special_tokens=False)
                record = {text_field: text, "prefix_tokens": len(prefix), "index": first + offset}
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            if on_batch:
                on_batch(len(rows))
    return max(done, total)
