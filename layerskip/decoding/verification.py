"""The one verify/accept step every strategy shares.

Verification runs the target model over every row's pending token and drafts in one forward,
reusing what the draft already computed (K/V and exit hidden states below ``reuse_layers``), then
accepts a prefix of the drafts:

- greedy: the longest prefix equal to the target's argmax, plus the target's own next token;
- sampling: speculative sampling (Leviathan et al. 2023; Chen et al. 2023): accept ``d_i`` with
  probability ``min(1, p(d_i)/q(d_i))``; at the first rejection sample from
  ``norm(max(p - q, 0))``; after n acceptances sample the bonus token from p. The output
  distribution equals the target's.
"""

from __future__ import annotations

import torch

from layerskip.decoding.types import DecodeBatch, Draft, Verdict
from layerskip.decoding.sampling import SamplingConfig, probabilities, process_logits


def target_logits(batch: DecodeBatch, draft: Draft, depth: int) -> torch.Tensor:
    """Target logits ``[batch, n+1, vocab]`` (float32) at each row's pending token and drafts, n the
    longest draft (a shorter row's positions past its draft are filler, at slots past its tokens).

    Row b's positions are ``slot_b..slot_b+n``. Layers below ``draft.reuse_layers`` run only for the
    tokens at ``slot_b+n``, whose draft pass never happened; layers from there up to ``depth`` run for
    all n+1 tokens.
    """
    model, cache, n = batch.model, batch.cache, draft.longest
    reuse = min(draft.reuse_layers, depth) if n else 0
    start = batch.starts()
    if reuse > 0 and draft.exit_hidden is not None:
        last = torch.tensor([[t[-1] if len(t) == n else 0] for t in draft.tokens], device=model.device)
        h_last = model.run_layers(model.embed(last), 0, reuse, cache, batch.starts(n))
        hidden = torch.cat([draft.exit_hidden[:, :n], h_last], dim=1)
    else:
        reuse = 0
        rows = [[row.pending, *t] + [0] * (n - len(t)) for row, t in zip(batch.rows, draft.tokens)]
        hidden = model.embed(torch.tensor(rows, device=model.device))
    hidden = model.run_layers(hidden, reuse, depth, cache, start)
    return model.unembed(hidden).float()


def accept_greedy(drafts: list[int], target: torch.Tensor) -> Verdict:
    """target ``[n+1, vocab]`` processed logits -> the longest agreeing prefix + the target's next token."""
    return accept_prefix(drafts, target.argmax(-1).tolist())


def accept_prefix(drafts: list[int], choices: list[int]) -> Verdict:
    """The longest prefix of ``drafts`` equal to the target's ``choices`` (at least n+1 of them) + the
    target's next token."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == choices[accepted]:
        accepted += 1
    return Verdict(drafts[:accepted] + [choices[accepted]], accepted)


def accept_sampled(
    drafts: list[int], q: torch.Tensor | None, p: torch.Tensor, generator: torch.Generator | None
) -> Verdict:
    """Speculative sampling. q ``[n, vocab]`` draft probs, p ``[n+1, vocab]`` target probs."""
    n = len(drafts)
    if n:
        assert q is not None
        idx = torch.tensor(drafts, device=p.device)
        rows = torch.arange(n, device=p.device)
        p_d, q_d = p[rows, idx], q[rows, idx]
        u = torch.rand(n, device=p.device, generator=generator)
        rejected = (u * q_d > p_d).tolist()  # u < p/q without dividing by q
        for i, rej in enumerate(rejected):
            if rej:
                residual = (p[i] - q[i]).clamp_min(0)
                total = residual.sum()
                dist = residual / total if float(total) > 0 else p[i]
                token = int(torch.multinomial(dist, 1, generator=generator))
                return Verdict(drafts[:i] + [token], i)
    bonus = int(torch.multinomial(p[n], 1, generator=generator))
    return Verdict(list(drafts) + [bonus], n)


def verify(batch: DecodeBatch, draft: Draft, depth: int) -> list[Verdict]:
    """Run the target (layers ``0..depth-1``) over each row's pending token and drafts; accept a prefix
    of each row's drafts (its own sampling settings and generator)."""
    logits = target_logits(batch, draft, depth)
    if batch.greedy:
        choices = logits.argmax(-1).tolist()  # the round's one host sync
        return [accept_prefix(tokens, row_choices) for tokens, row_choices in zip(draft.tokens, choices)]
    verdicts = []
    for b, (row, tokens) in enumerate(zip(batch.rows, draft.tokens)):
        sampling: SamplingConfig = row.sampling
        contexts = None
        if sampling.no_repeat_ngram_size:
            contexts = [row.history + tokens[:i] for i in range(len(tokens) + 1)]
        processed = process_logits(logits[b, : len(tokens) + 1], sampling, contexts)
        if not sampling.sample:
            verdicts.append(accept_greedy(tokens, processed))
        else:
            verdicts.append(accept_sampled(tokens, draft.probs[b], probabilities(processed), row.generator))
    return verdicts
