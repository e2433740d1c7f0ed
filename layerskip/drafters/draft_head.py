"""The draft's LM head, optionally restricted to a frequency-ranked vocabulary subset.

FR-Spec (Zhao et al. 2025, "FR-Spec: Accelerating Large-Vocabulary Language Models via
Frequency-Ranked Speculative Sampling"): the LM head of a large-vocabulary model is a large share of
a shallow draft's cost (SmolLM2's 49152 x 576 head is most of an exit-2 draft), and most of its rows
are tokens that are rarely produced. Drafting scores only the ``N`` most frequent tokens of a corpus
(plus the stop tokens); verification always uses the full head, so the output is unchanged. Tokens
outside the subset get ``-inf`` draft logits: they are never drafted and have draft probability 0,
which speculative sampling handles exactly.

The ranking is stored beside the checkpoint or the draft adapter as ``draft_vocab.safetensors``
(one int64 tensor ``token_ids``, most frequent first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from layerskip.errors import LayerskipError
from layerskip.kernels.linear import make_linear
from layerskip.model.decoder import LlamaForCausalLM

RANKING_FILE = "draft_vocab.safetensors"


def frequency_ranking(stream: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Token ids ``[k]`` (int64) of every id occurring in ``stream`` ``[n]``, most frequent first
    (ties by id, so the ranking is deterministic)."""
    counts = torch.bincount(stream.long().flatten(), minlength=vocab_size)[:vocab_size]
    seen = int((counts > 0).sum())
    order = torch.sort(-counts, stable=True).indices  # stable: equal counts keep id order
    return order[:seen].clone()


def save_ranking(directory: Path, token_ids: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    path = Path(directory) / RANKING_FILE
    tmp = path.with_suffix(".tmp")
    save_file({"token_ids": token_ids.long().contiguous()}, str(tmp))
    tmp.replace(path)
    return path


def load_ranking(directories: Iterable[Path | None]) -> torch.Tensor:
    """The ranking from the first of ``directories`` that holds one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    searched = [Path(d) for d in directories if d is not None]
    for directory in searched:
        path = directory / RANKING_FILE
        if path.exists():
            try:
                ids = load_file(str(path))["token_ids"]
            except (SafetensorError, OSError, KeyError) as exc:
                raise LayerskipError(f"corrupt draft vocabulary {path}: {exc!r}") from None
            if ids.dim() != 1 or ids.dtype != torch.int64:
                raise LayerskipError(f"corrupt draft vocabulary {path}: token_ids must be a 1-d int64 tensor")
            return ids
    where = ", ".join(str(d) for d in searched) or "no directory"
    raise LayerskipError(
        f"`draft_vocab` needs a frequency ranking ({RANKING_FILE}) beside the checkpoint or draft adapter; "
        f"none in {where} (layerskip train-adapter writes one)"
    )


class DraftHead:
    """``logits = lm_head(norm(h))`` for drafting, over the full vocabulary or a subset.

    ``token_ids`` ``[N]``: the vocabulary subset (None: the full head). The subset's rows of the
    LM head are copied once, so a draft step reads ``N x dim`` weights instead of ``vocab x dim``.
    """

    def __init__(self, model: LlamaForCausalLM, token_ids: torch.Tensor | None = None) -> None:
        self.model = model
        self.token_ids = None if token_ids is None else token_ids.to(model.device)
        self.kernel = None if token_ids is None else make_linear(model.lm_head.weight[self.token_ids].contiguous(), None)

    @property
    def size(self) -> int:
        return self.model.config.vocab_size if self.token_ids is None else int(self.token_ids.numel())

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden ``[batch, T, dim]`` -> float32 logits ``[batch, T, vocab]`` (``-inf`` off the subset)."""
        normed = self.model.model.norm(hidden)
        if self.kernel is None:
            return self.model.lm_head(normed).float()
        scores = self.kernel(normed).float()
        logits = scores.new_full((*scores.shape[:-1], self.model.config.vocab_size), float("-inf"))
        return logits.index_copy_(-1, self.token_ids, scores)


def draft_subset(ranking: torch.Tensor, size: int, always: Iterable[int], vocab_size: int) -> torch.Tensor:
    """The ``size`` most frequent ids of ``ranking`` plus the ``always`` ids (stop tokens), sorted."""
    if size < 1:
        raise LayerskipError(f"`draft_vocab` must be >= 1, got {size}")
    if size >= vocab_size:
        raise LayerskipError(f"`draft_vocab` {size} is not below the vocabulary size {vocab_size}")
    chosen = set(ranking[:size].tolist()) | {i for i in always if 0 <= i < vocab_size}
    if any(not 0 <= i < vocab_size for i in chosen):
        raise LayerskipError(f"draft vocabulary ranking holds ids outside 0..{vocab_size - 1}")
    return torch.tensor(sorted(chosen), dtype=torch.int64)
