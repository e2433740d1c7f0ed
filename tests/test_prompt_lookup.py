"""Prompt lookup drafting: n-gram matching, exactness alone and composed with the model's draft
(greedy token for token, sampling in distribution), configuration and command-line errors."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace

import pytest
import torch

from helpers import assert_one_line_error, dampen_layers, run_cli
from test_sampling import chi2, chi2_critical

from layerskip.cli import main
from layerskip.drafters.config import DraftConfig, build_drafter, load_draft_config, validate
from layerskip.decoding.types import Draft, DraftReport
from layerskip.drafters.base import Drafter
from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.errors import LayerskipError
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import load_model
from layerskip.drafters.prompt_lookup import LookupOrModelDrafter, PromptLookupDrafter
from layerskip.decoding.sampling import SamplingConfig, probabilities, process_logits
from layerskip.decoding.strategy import Strategy

GREEDY = SamplingConfig(sample=False)
PROMPT = [0, 17, 42, 99, 7, 150]


def reference_lookup(history: list[int], max_n: int, min_n: int, limit: int) -> list[int]:
    """Brute force: the longest n first, its most recent earlier occurrence, the tokens after it."""
    for n in range(max_n, min_n - 1, -1):
        if len(history) < n:
            continue
        suffix = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):
            if history[start : start + n] == suffix:
                return history[start + n : start + n + limit]
    return []


def test_lookup_takes_the_most_recent_match():
    history = [1, 2, 3, 9, 1, 2, 4, 7, 1, 2]
    assert PromptLookupDrafter(3, max_ngram=2).lookup(history, 10) == [4, 7, 1]


def test_lookup_tries_the_longest_ngram_first_and_respects_min_ngram():
    history = [5, 2, 3, 8, 7, 3, 9, 2, 3]  # (2, 3) last seen before 8; (3,) last seen before 9
    assert PromptLookupDrafter(3, max_ngram=2).lookup(history, 10) == [8, 7, 3]
    assert PromptLookupDrafter(3, max_ngram=1).lookup(history, 10) == [9, 2, 3]
    assert PromptLookupDrafter(3, max_ngram=3, min_ngram=3).lookup(history, 10) == []  # (9, 2, 3) never seen before
    assert PromptLookupDrafter(3).lookup([1, 2, 3, 4], 10) == []  # nothing repeats


def test_lookup_limit_and_stop_tokens():
    history = [1, 2, 3, 4, 5, 6, 1, 2]
    drafter = PromptLookupDrafter(4)
    assert drafter.lookup(history, 10) == [3, 4, 5, 6]  # num_speculations
    assert drafter.lookup(history, 2) == [3, 4]  # the round's limit
    assert drafter.lookup(history, 0) == []
    assert drafter.lookup(history, 10, stop_ids=frozenset({4})) == [3, 4]  # ends after a stop token


def test_lookup_factor_drafts_in_proportion_to_the_match_extent():
    """SuffixDecoding's rule: at most floor(factor * m) tokens, m = how far the match agrees backwards."""
    short = [7, 1, 2, 3, 4, 5, 6, 9, 2, 3]  # (2, 3) recurs, preceded by 1 there and 9 here: m = 2
    assert PromptLookupDrafter(8, factor=0.5).lookup(short, 10) == [4]
    assert PromptLookupDrafter(8, factor=1.0).lookup(short, 10) == [4, 5]
    assert PromptLookupDrafter(8, factor=2.0).lookup(short, 10) == [4, 5, 6, 9]
    assert PromptLookupDrafter(3, factor=2.0).lookup(short, 10) == [4, 5, 6]  # num_speculations still bounds it
    assert PromptLookupDrafter(8, factor=2.0).lookup(short, 2) == [4, 5]  # and the round's limit
    long = [1, 2, 3, 4, 5, 6, 8, 1, 2, 3, 4]  # (2, 3, 4) recurs and the agreement reaches back to 1: m = 4
    assert PromptLookupDrafter(8, factor=0.5).lookup(long, 10) == [5, 6]
    assert PromptLookupDrafter(8, factor=0.4).lookup([5, 2, 9, 5], 10) == []  # m = 1: a coincidence proposes nothing
    assert PromptLookupDrafter(8, factor=0.4).lookup(long, 10) == [5]
    with pytest.raises(ValueError, match="factor must be > 0"):
        PromptLookupDrafter(8, factor=0.0)


def test_lookup_factor_matches_a_brute_force_extent():
    rng = random.Random(1)
    for _ in range(300):
        history = [rng.randrange(4) for _ in range(rng.randrange(2, 30))]
        factor = rng.choice([0.3, 0.5, 1.0, 1.7])
        got = PromptLookupDrafter(6, max_ngram=3, factor=factor).lookup(history, 6)
        expected: list[int] = []
        for n in range(3, 0, -1):  # the latest occurrence of the longest recurring n-gram, extended backwards
            starts = [s for s in range(len(history) - n) if history[s : s + n] == history[len(history) - n :]]
            if starts:
                s = starts[-1]
                m = n
                while s - (m - n) - 1 >= 0 and history[s - (m - n) - 1] == history[len(history) - m - 1]:
                    m += 1
                expected = history[s + n : s + n + min(6, int(factor * m))]
                if expected:
                    break
        assert got == expected, (history, factor)


def test_lookup_skips_what_no_repeat_ngram_forbids():
    history = [1, 2, 3, 7, 2, 4, 1, 2]
    drafter = PromptLookupDrafter(4, max_ngram=2)
    assert drafter.lookup(history, 10) == [3, 7, 2, 4]
    # with no_repeat_ngram_size 3, "1 2 3" is banned: the bigram match is cut to nothing and the
    # unigram (2,) -> 4 is used; "2 4 1" is banned too, so that draft stops after 4
    assert drafter.lookup(history, 10, no_repeat_ngram_size=3) == [4]


def test_incremental_index_equals_brute_force():
    rng = random.Random(0)
    for max_n, min_n in ((3, 1), (4, 2), (1, 1)):
        drafter = PromptLookupDrafter(5, max_ngram=max_n, min_ngram=min_n)
        history = [rng.randrange(4) for _ in range(3)]
        for _ in range(200):
            assert drafter.lookup(history, 5) == reference_lookup(history, max_n, min_n, 5)
            history.extend(rng.randrange(4) for _ in range(rng.randrange(1, 4)))
        other = [rng.randrange(4) for _ in range(30)]  # another sequence starts the index afresh
        assert drafter.lookup(other, 5) == reference_lookup(other, max_n, min_n, 5)


class Recording(Drafter):
    """Wraps a drafter and records the rounds it was asked for and the updates it received."""

    def __init__(self, inner: Drafter) -> None:
        self.inner, self.max_tokens = inner, inner.max_tokens
        self.proposed: list[int] = []
        self.updates: list[tuple[int, int]] = []

    def new_state(self):
        return self.inner.new_state()

    def propose(self, batch, limits, states) -> Draft:
        draft = self.inner.propose(batch, limits, states)
        self.proposed.append(len(draft.tokens[0]))
        return draft

    def update(self, state, drafted: int, accepted: int) -> None:
        self.updates.append((drafted, accepted))
        self.inner.update(state, drafted, accepted)

    def report(self, state) -> DraftReport:
        return self.inner.report(state)


def test_composition_updates_only_the_drafter_that_drafted(tiny_model):
    model = Recording(EarlyExitDrafter(2, 3))
    drafter = LookupOrModelDrafter(PromptLookupDrafter(3), model)
    stats = generate(tiny_model, PROMPT, GenerationConfig(max_steps=40, sampling=GREEDY), Decoding(drafter)).stats
    assert len(model.updates) == len(model.proposed) > 0 and [d for d, _ in model.updates] == model.proposed
    assert stats.draft.lookup.rounds > 0 and stats.draft.lookup.rounds + len(model.proposed) == stats.verify_forwards
    assert stats.draft.lookup.drafted_tokens + sum(model.proposed) == stats.drafted_tokens
    assert (stats.exit_layer, stats.draft.num_speculations) == (2, 3)


@pytest.mark.parametrize("draft, exit_layer, k", [
    ("prompt_lookup", None, 2), ("prompt_lookup", None, None), ("prompt_lookup+model", 1, 2),
    ("prompt_lookup+model", 2, 3), ("prompt_lookup+model", 3, 5),
])
def test_greedy_prompt_lookup_equals_autoregressive(tiny_model, draft, exit_layer, k):
    config = GenerationConfig(max_steps=40, sampling=GREEDY)
    expected = generate(tiny_model, PROMPT, config).token_ids
    chosen = Strategy("layerskip", "self_speculative", DraftConfig(exit_layer, k, draft=draft)).decoding(tiny_model.num_layers)
    got = generate(tiny_model, PROMPT, config, chosen)
    s = got.stats
    assert got.token_ids == expected
    assert 0 < s.draft.lookup.accepted_tokens < s.draft.lookup.drafted_tokens  # lookups were made, some accepted, some not
    assert s.draft.num_speculations == (k or 10)
    if draft == "prompt_lookup":
        assert s.draft.lookup.drafted_tokens == s.drafted_tokens and s.draft_forwards == 0
    else:
        assert s.drafted_tokens > s.draft.lookup.drafted_tokens and s.exit_layer == exit_layer  # the model drafted too


@pytest.mark.parametrize("draft, factor", [("prompt_lookup", 1.0), ("prompt_lookup+model", 0.5), ("prompt_lookup+model", 2.0)])
def test_greedy_prompt_lookup_with_a_length_factor_equals_autoregressive(tiny_model, draft, factor):
    config = GenerationConfig(max_steps=40, sampling=GREEDY)
    expected = generate(tiny_model, PROMPT, config).token_ids
    plain = DraftConfig(2, 4, draft=draft, prompt_lookup_num_tokens=8, prompt_lookup_max_ngram=8)
    fixed = generate(tiny_model, PROMPT, config, Decoding(build_drafter(plain, tiny_model.num_layers))).stats
    scaled = Strategy("layerskip", "self_speculative", replace(plain, prompt_lookup_factor=factor))
    scaled.validate(tiny_model.num_layers)
    got = generate(tiny_model, PROMPT, config, scaled.decoding(tiny_model.num_layers))
    assert got.token_ids == expected
    assert 0 < got.stats.draft.lookup.drafted_tokens < fixed.draft.lookup.drafted_tokens  # shorter lookup drafts, same output


def test_lookup_drafts_its_own_length_while_the_model_drafts_k(tiny_model):
    """prompt_lookup_num_tokens: long lookup copies, short model drafts, output unchanged."""
    config = GenerationConfig(max_steps=40, sampling=GREEDY)
    expected = generate(tiny_model, PROMPT, config).token_ids
    draft = DraftConfig(2, 2, draft="prompt_lookup+model", prompt_lookup_num_tokens=6)
    decoding = Strategy("layerskip", "self_speculative", draft).decoding(tiny_model.num_layers)
    assert (decoding.drafter.lookup.max_tokens, decoding.drafter.model.max_tokens, decoding.drafter.max_tokens) == (6, 2, 6)
    got = generate(tiny_model, PROMPT, config, decoding)
    assert got.token_ids == expected and got.stats.draft.lookup.drafted_tokens > 0


def test_greedy_prompt_lookup_composes_with_layerwise_drafts_and_no_repeat_ngram(tiny_model):
    for sampling in (GREEDY, SamplingConfig(sample=False, no_repeat_ngram_size=3)):
        config = GenerationConfig(max_steps=40, sampling=sampling)
        expected = generate(tiny_model, PROMPT, config).token_ids
        draft = DraftConfig(3, 4, criteria="top2_margin", threshold=0.2, draft_length="heuristic", draft="prompt_lookup+model")
        got = generate(tiny_model, PROMPT, config, Decoding(build_drafter(draft, tiny_model.num_layers)))
        assert got.token_ids == expected and got.stats.draft.lookup.rounds > 0 and got.stats.mean_exit_layer is not None


@pytest.mark.parametrize("draft, factor", [("prompt_lookup", None), ("prompt_lookup+model", None), ("prompt_lookup+model", 2.0)])
def test_sampling_with_prompt_lookup_reproduces_full_model_distribution(tiny_dir, draft, factor):
    """Joint law of the first three generated tokens vs the exact full-model law (top-k 3).

    Attention outputs are zeroed, so the model is a bigram model (its law depends on the last
    token only) and the prompt can hold, for the first tokens the model may pick, a likely
    successor: the lookup then proposes it, and it is accepted or rejected by chance."""
    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(model, 1, 0.3)  # the exit-1 draft agrees with the full model only partly
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    sampling = SamplingConfig(sample=True, temperature=1.5, top_k=3, top_p=1.0)
    with torch.no_grad():
        def dist(token):
            return probabilities(process_logits(model(torch.tensor([[token]]))[0, -1:].float(), sampling))[0]

        firsts = torch.nonzero(dist(42)).flatten().tolist()
        # a likely successor after each first token; for the combined draft, one first token
        # is left out, so that the model drafts when it is picked
        listed = firsts if draft == "prompt_lookup" else firsts[:-1]
        prompt = [t for a in listed if a != 42 for t in (a, int(dist(a).argmax()), 0)] + [17, 42]
        exact: dict[tuple, float] = {}
        p1 = dist(42)
        for a in torch.nonzero(p1).flatten().tolist():
            p2 = dist(a)
            for b in torch.nonzero(p2).flatten().tolist():
                p3 = dist(b)
                for c in torch.nonzero(p3).flatten().tolist():
                    exact[(a, b, c)] = float(p1[a] * p2[b] * p3[c])
    drafter = build_drafter(DraftConfig(1, 2, draft=draft, prompt_lookup_factor=factor), model.num_layers)
    n = 1000
    counts: dict[tuple, int] = {}
    lookup_drafted = lookup_accepted = drafted = 0
    for seed in range(n):
        got = generate(model, prompt, GenerationConfig(max_steps=3, sampling=sampling, seed=seed), Decoding(drafter))
        counts[tuple(got.token_ids)] = counts.get(tuple(got.token_ids), 0) + 1
        lookup_drafted += got.stats.draft.lookup.drafted_tokens
        lookup_accepted += got.stats.draft.lookup.accepted_tokens
        drafted += got.stats.drafted_tokens
    assert 0 < lookup_accepted < lookup_drafted  # lookup drafts were accepted and rejected
    if draft == "prompt_lookup+model":
        assert drafted > lookup_drafted  # the model drafted when the lookup found nothing
    stat, df = chi2(counts, exact, n)
    assert stat < chi2_critical(df), (stat, df)


def test_draft_config_fields_round_trip_and_validate(tmp_path):
    config = DraftConfig(exit_layer=2, num_speculations=6, draft="prompt_lookup+model", prompt_lookup_max_ngram=4,
                         prompt_lookup_min_ngram=2)
    path = tmp_path / "draft.json"
    path.write_text(json.dumps({"draft": config.to_dict()}))
    assert load_draft_config(str(path)) == config
    spec = Strategy.parse("self_speculative:draft=prompt_lookup,num_speculations=8,prompt_lookup_max_ngram=2")
    assert (spec.draft.draft, spec.num_speculations, spec.draft.prompt_lookup_max_ngram) == ("prompt_lookup", 8, 2)
    spec.validate(4)
    Strategy.parse("self_speculative:draft=prompt_lookup").validate(4)  # no exit layer, no k: k defaults to 10
    for bad, needle in [
        (DraftConfig(draft="prompt_lookup", prompt_lookup_min_ngram=0), "need 1 <= min <= max"),
        (DraftConfig(draft="prompt_lookup", prompt_lookup_min_ngram=3, prompt_lookup_max_ngram=2), "need 1 <= min <= max"),
        (DraftConfig(2, 2, draft="lookup"), "`draft` must be one of"),
        (DraftConfig(draft="prompt_lookup+model", num_speculations=3), "needs `exit_layer`"),
        (DraftConfig(draft="prompt_lookup", prompt_lookup_factor=0.0), "`prompt_lookup_factor` 0.0: needs a number > 0"),
        (DraftConfig(2, 2, prompt_lookup_factor=0.5), "needs a number > 0 and `draft` prompt_lookup"),
    ]:
        with pytest.raises(LayerskipError, match=needle):
            Strategy("layerskip", "self_speculative", bad).validate(4)
    with pytest.raises(LayerskipError, match="is a draft strategy"):
        Strategy("layerskip", "autoregressive", DraftConfig(draft="prompt_lookup")).validate(4)
    with pytest.raises(LayerskipError, match="transformers only drafts with a fixed early exit"):
        Strategy.parse("hf:self_speculative:e=2,k=3,draft=prompt_lookup+model").validate(4)


COMMON = ["--dataset", "human_eval", "--num_samples", "2", "--max_steps", "16", "--dtype", "float32", "--no_progress", "True"]


def test_cli_prompt_lookup_needs_no_exit_layer(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "def f(x): return f(x)", "--max_steps", "12",
                 "--sample", "False", "--generation_strategy", "self_speculative", "--draft", "prompt_lookup",
                 "--prompt_lookup_max_ngram", "2", "--json", "--dtype", "float32"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["num_speculations"] == 10 and stats["exit_layer"] is None and stats["lookup_rounds"] is not None


def test_draft_model_flag_drops_the_recommended_lookup_length(tiny_dir, tmp_path, capsys):
    """A recommendation of lookup (<= 6 tokens) + the model's exit-2 draft: used as a whole by
    default; --draft model keeps its exit and k and drops the lookup length instead of failing."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "layerskip.json").write_text(json.dumps({"recommended": {
        "draft": "prompt_lookup+model", "exit_layer": 2, "num_speculations": 2, "prompt_lookup_num_tokens": 6}}))
    base = ["generate", "--model", str(model), "--prompt", "def f(x): return f(x)", "--max_steps", "12", "--sample",
            "False", "--generation_strategy", "self_speculative", "--json", "--dtype", "float32"]
    assert main(base) == 0
    recommended = json.loads(capsys.readouterr().out)["stats"]
    assert main([*base, "--draft", "model"]) == 0
    model_only = json.loads(capsys.readouterr().out)["stats"]
    assert recommended["lookup_rounds"] is not None and model_only["lookup_rounds"] is None
    assert (model_only["exit_layer"], model_only["num_speculations"]) == (2, 2)


def test_a_new_draft_kind_drops_the_recommendations_settings_it_cannot_use():
    """The same rule for flags and --compare specs: a recommendation of lookup + an adapter draft with
    a draft vocabulary, overridden by draft=prompt_lookup (no model draft) or draft=model (no lookup)."""
    recommended = DraftConfig(draft="prompt_lookup+model", exit_layer=2, num_speculations=2, draft_adapter="a",
                              draft_vocab=64, prompt_lookup_num_tokens=6)
    lookup = Strategy.parse("self_speculative:draft=prompt_lookup,k=8", recommended).draft
    assert (lookup.draft_adapter, lookup.draft_vocab, lookup.num_speculations) == (None, None, 8)
    assert lookup.prompt_lookup_num_tokens == 6
    model = Strategy.parse("self_speculative:draft=model", recommended).draft
    assert (model.prompt_lookup_num_tokens, model.draft_adapter, model.draft_vocab) == (None, "a", 64)
    hf = Strategy.parse("hf:self_speculative", recommended)
    assert hf.draft == DraftConfig(exit_layer=2, num_speculations=2)
    hf.validate(4)
    plain = Strategy.parse("self_speculative:draft=model,draft_adapter=none,draft_vocab=None,k=3", recommended).draft
    assert (plain.draft_adapter, plain.draft_vocab, plain.exit_layer, plain.num_speculations) == (None, None, 2, 3)
    with pytest.raises(LayerskipError, match="bad value 'none' for prompt_lookup_max_ngram"):
        Strategy.parse("self_speculative:prompt_lookup_max_ngram=none", recommended)  # a setting that cannot be unset
    explicit = recommended.merged(draft="prompt_lookup", draft_vocab=32)
    assert explicit.draft_vocab == 32  # given with the new kind: kept, and refused by validation
    with pytest.raises(LayerskipError, match="drafts without the model"):
        validate(explicit, 4, True)


def test_cli_correctness_and_benchmark_with_prompt_lookup(tiny_dir, tmp_path, capsys):
    code = main(["correctness", "--model", str(tiny_dir), *COMMON, "--draft", "prompt_lookup+model", "--exit_layer", "2",
                 "--num_speculations", "3", "--output_dir", str(tmp_path)])
    assert code == 0 and "0 mismatches" in capsys.readouterr().out
    code = main(["benchmark", "--model", str(tiny_dir), *COMMON, "--output_dir", str(tmp_path), "--sample", "False",
                 "--compare", "autoregressive", "self_speculative:draft=prompt_lookup,num_speculations=8"])
    assert code == 0
    doc = json.loads(next(tmp_path.glob("benchmark_*.json")).read_text())
    lookup = doc["results"]["self_speculative:num_speculations=8,draft=prompt_lookup"]
    assert lookup["matches_autoregressive"] == 1.0 and lookup["speed"]["lookup_rounds"]["n"] == 2


@pytest.mark.parametrize("extra, needle", [
    (["--draft", "prompt_lookup", "--prompt_lookup_min_ngram", "0"], "need 1 <= min <= max"),
    (["--draft", "prompt_lookup", "--prompt_lookup_min_ngram", "4", "--prompt_lookup_max_ngram", "2"], "need 1 <= min <= max"),
    (["--draft", "lookup"], "invalid choice"),
    (["--exit_layer", "1", "--num_speculations", "2", "--prompt_lookup_num_tokens", "4"], "needs an integer >= 1 and --draft prompt_lookup"),
    (["--draft", "prompt_lookup", "--prompt_lookup_num_tokens", "0"], "--prompt_lookup_num_tokens 0"),
    (["--draft", "prompt_lookup", "--prompt_lookup_factor", "-1"], "--prompt_lookup_factor -1.0: needs a number > 0"),
    (["--exit_layer", "1", "--num_speculations", "2", "--prompt_lookup_factor", "0.5"], "needs a number > 0 and --draft prompt_lookup"),
    (["--draft", "prompt_lookup", "--prompt_lookup_factor", "half"], "invalid float value"),
    (["--draft", "prompt_lookup", "--generation_strategy", "autoregressive"], "is a draft strategy"),
])
def test_cli_prompt_lookup_bad_input_is_one_line(tiny_dir, extra, needle):
    assert_one_line_error(run_cli("generate", "--model", str(tiny_dir), "--prompt", "hi", "--generation_strategy",
                                  "self_speculative", *extra), needle)
