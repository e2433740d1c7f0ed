"""Validation loss and top-1 agreement with the last layer at every exit layer of a checkpoint,
on the held-out split of a corpus (the split and windows ``layerskip train`` evaluates on).

    python benchmarks/exit_quality.py                               # shipped model, stdlib
    python benchmarks/exit_quality.py --model runs/x/final --corpus data.jsonl

Compares checkpoints trained on different corpora on the same text (the trainer's own
evaluation uses the held-out part of its training corpus).
"""

from __future__ import annotations

import argparse
import sys

from layerskip.cli.arguments import flag_names
from layerskip.errors import LayerskipError, named_as_flags
from layerskip.checkpoints.loading import load
from layerskip.training import data as corpus
from layerskip.training.objective import mean_exit_statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the shipped model")
    parser.add_argument("--corpus", default=corpus.STDLIB)
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    try:
        loaded = load(args.model, device="cpu", dtype="float32")
        _, val_docs = corpus.split_documents(corpus.corpus_documents(args.corpus, args.text_field))
        stream = corpus.tokenize_stream(val_docs, loaded.tokenizer, corpus.document_separator(loaded.tokenizer))
        batches = corpus.sequential_windows(stream, args.batch_size, args.seq_len, args.batches)
    except LayerskipError as exc:
        sys.exit(f"exit_quality.py: error: {named_as_flags(str(exc), flag_names(parser))}")
    layers = loaded.model.num_layers
    loss, agreement = mean_exit_statistics(loaded.model, batches)
    tokens = sum(inputs.numel() for inputs, _ in batches)
    print(f"{loaded.path} on the held-out split of {args.corpus} ({tokens} tokens)\n")
    print("| exit layer | " + " | ".join(str(i + 1) for i in range(layers)) + " |")
    print("| --- |" + " ---: |" * layers)
    print("| loss | " + " | ".join(f"{x:.2f}" for x in loss) + " |")
    print("| agreement | " + " | ".join(f"{x:.2f}" for x in agreement) + " |")


if __name__ == "__main__":
    main()
