"""Quality metrics: ROUGE-1/2/3/L (rouge-score), BLEU (sacrebleu), exact match, edit distance (rapidfuzz),
and HumanEval pass@1 by executing the problem's tests (``layerskip.evaluation.execution``)."""

from __future__ import annotations

import math
import statistics
from functools import lru_cache
from typing import Iterable

ROUGE_TYPES = ("rouge1", "rouge2", "rouge3", "rougeL")


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE f-measures; rouge-score's ``score(target, prediction)`` takes the reference first."""
    scores = _rouge_scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (0-100): sacrebleu's ``sentence_bleu(hypothesis, [references])``."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal after stripping surrounding whitespace, else 0.0."""
    return float(prediction.strip() == reference.strip())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (characters), computed by rapidfuzz."""
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


def text_metrics(prediction: str, reference: str) -> dict[str, float]:
    out = rouge(prediction, reference)
    out["bleu"] = bleu(prediction, reference)
    out["exact_match"] = exact_match(prediction, reference)
    out["edit_distance"] = float(edit_distance(prediction, reference))
    return out


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean, standard deviation (sample), and count of the values that are not None/NaN."""
    clean = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(clean), "std": statistics.stdev(clean) if len(clean) > 1 else 0.0, "n": len(clean)}
