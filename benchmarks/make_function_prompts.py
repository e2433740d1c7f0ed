"""Write HumanEval-style prompts from the Python standard library: a function's header and docstring.

Each record is ``{"id", "text"}``: one function of a module in the training split of the ``stdlib``
corpus (``layerskip.training.data``; the validation split and HumanEval itself stay unseen), from
its ``def`` line to the end of its docstring, dedented, followed by a newline, as a HumanEval prompt
ends. The model's greedy continuations of these prompts (``layerskip self-generate --prompts``) are
text of the kind a draft adapter is measured on with HumanEval. Deterministic for a given Python::

    python benchmarks/make_function_prompts.py --output runs/function_prompts.jsonl --count 2000
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import textwrap
from pathlib import Path

from layerskip.training import data as corpus

MAX_CHARS = 1200
MIN_DOC_CHARS = 20


def function_prompts(text: str) -> list[str]:
    """Header + docstring of every documented function in a module's source."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    prompts = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("test"):
            continue
        doc = ast.get_docstring(node)
        first = node.body[0]
        if not doc or len(doc) < MIN_DOC_CHARS or first.end_lineno is None:
            continue
        prompt = textwrap.dedent("\n".join(lines[node.lineno - 1 : first.end_lineno])) + "\n"
        if len(prompt) <= MAX_CHARS:
            prompts.append(prompt)
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--count", type=int, default=2000, help="prompts to keep (a seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train_docs, _ = corpus.split_documents(corpus.corpus_documents(corpus.STDLIB))
    prompts = [(doc.source, p) for doc in train_docs for p in function_prompts(doc.text)]
    chosen = random.Random(args.seed).sample(prompts, min(args.count, len(prompts)))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for i, (source, text) in enumerate(chosen):
            handle.write(json.dumps({"id": f"{Path(source).stem}-{i}", "text": text}) + "\n")
    print(f"{out}: {len(chosen)} prompts from {len(prompts)} documented functions")


if __name__ == "__main__":
    main()
