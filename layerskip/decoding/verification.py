"""The one verify/accept step every strategy shares.

Verification runs the target model over the pending token and the n drafts in one forward,
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

from layerskip.decoding.types import DecodeState, Draft, Verdict
from layerskip.decoding.sampling import SamplingConfig, probabilities, process_logits


def target_logits(state: DecodeState, draft: Draft, depth: int) -> torch.Tensor:
    """Target logits ``[n+1, vocab]`` (float32) at the pending token and each draft token.

    Positions ``slot..slot+n``. Layers below ``draft.reuse_layers`` run only for ``d_n``, whose
    draft pass never happened; layers from there up to ``depth`` run for all n+1 tokens.
    """
    model, cache, n = state.model, state.cache, len(draft)
    reuse = min(draft.reuse_layers, depth) if n else 0
    if reuse > 0 and draft.exit_hidden is not None:
        last = torch.tensor([[draft.tokens[-1]]], device=model.device)
        h_last = model.run_layers(model.embed(last), 0, reuse, cache, state.slot + n)
        hidden = torch.cat([draft.exit_hidden, h_last], dim=1)
    else:
        reuse = 0
        ids = torch.tensor([[state.pending, *draft.tokens]], device=model.device)
        hidden = model.embed(ids)
    hidden = model.run_layers(hidden, reuse, depth, cache, state.slot)
    return model.unembed(hidden)[0].float()


def accept_greedy(drafts: list[int], target: torch.Tensor) -> Verdict:
    """target ``[n+1, vocab]`` processed logits -> the longest agreeing prefix + the target's next token."""
    choices = target.argmax(-1).tolist()
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


def verify(state: DecodeState, draft: Draft, depth: int) -> Verdict:
    """Run the target (layers ``0..depth-1``) over the pending token and the drafts; accept a prefix."""
    logits = target_logits(state, draft, depth)
    sampling: SamplingConfig = state.sampling
    contexts = None
    if sampling.no_repeat_ngram_size:
        contexts = [state.history + draft.tokens[:i] for i in range(len(draft) + 1)]
    processed = process_logits(logits, sampling, contexts)
    if not sampling.sample:
        return accept_greedy(draft.tokens, processed)
    return accept_sampled(draft.tokens, draft.probs, probabilities(processed), state.generator)
