"""The batched decoding core (layerskip.decoding.engine): every row of a batch, under every drafter, gives
exactly its batch-1 output (float32, greedy); rows stop where their batch-1 runs stop; sampled rows keep
the target's distribution; requests join, leave and abort between rounds."""

from __future__ import annotations

import pytest
import torch

from helpers import dampen_layers
from test_sampling import chi2, chi2_critical, three_token_law

from layerskip.checkpoints.loading import load_model
from layerskip.decoding.engine import Engine
from layerskip.decoding.loop import generate, generate_many
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.settings import AUTOREGRESSIVE, Decoding, GenerationConfig
from layerskip.decoding.strategy import Strategy
from layerskip.drafters.config import DraftConfig, build_drafter
from layerskip.errors import LayerskipError
from layerskip.kernels.linear import prepare_for_inference
from layerskip.model.adapter import init_adapter, save_adapter

GREEDY = SamplingConfig(sample=False)
#: eight prompts of different lengths, some repeating themselves (prompt lookup finds matches)
PROMPTS = [
    [0, 17, 42],
    [0, 5, 6, 7, 8, 9, 5, 6, 7],
    [0, 99],
    [0, 11, 12, 13, 11, 12, 13, 11, 12, 14, 15, 16],
    [0, 150, 151, 152, 153],
    [0, 7] * 6,
    [0, 200, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
    [0, 33, 34],
]

STRATEGIES = [
    "self_speculative:exit_layer=1,num_speculations=3",
    "self_speculative:exit_layer=2,num_speculations=5",
    "self_speculative:exit_layer=2,num_speculations=4,draft_length=heuristic",
    "self_speculative:exit_layer=2,num_speculations=4,draft_length=threshold",
    DraftConfig(3, 3, skip_attn=(1,), skip_mlp=(2,)),
    "self_speculative:exit_layer=3,num_speculations=3,layer_skip_proportion=0.3",
    "self_speculative:exit_layer=4,num_speculations=3,criteria=top2_margin,threshold=0.05",
    "self_speculative:num_speculations=4,draft=prompt_lookup",
    "self_speculative:exit_layer=2,num_speculations=3,draft=prompt_lookup+model",
    "self_speculative:exit_layer=2,num_speculations=3,draft_control=payoff",
]


@pytest.fixture(scope="module")
def model(tiny_dir):
    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(model, 2, 0.3)  # early exits agree with the full model often, not always
    return prepare_for_inference(model)


def decoding_for(spec: str | DraftConfig, layers: int) -> Decoding:
    if isinstance(spec, DraftConfig):
        return Decoding(build_drafter(spec, layers))
    return Strategy.parse(spec).decoding(layers)


def batch_one(model, prompts, configs, decoding=AUTOREGRESSIVE):
    return [generate(model, p, c, decoding).token_ids for p, c in zip(prompts, configs)]


@pytest.mark.parametrize("spec", STRATEGIES)
def test_every_row_equals_its_batch_one_autoregressive_output(model, spec):
    configs = [GenerationConfig(max_steps=10 + 3 * i, sampling=GREEDY) for i in range(len(PROMPTS))]
    expected = batch_one(model, PROMPTS, configs)
    decoding = decoding_for(spec, model.num_layers)
    results, summary = generate_many(model, PROMPTS, configs, decoding)
    assert [r.token_ids for r in results] == expected
    assert summary.generated_tokens == sum(len(e) for e in expected)
    assert summary.num_draft_tokens > 0 and summary.num_accepted_tokens > 0  # the drafts were used, some accepted
    for result in results:
        s = result.stats
        assert s.generated_tokens <= 1 + s.verify_forwards + s.accepted_tokens
        assert s.as_dict()["num_drafts"] == s.draft_rounds and s.num_draft_tokens == s.drafted_tokens


def test_rows_stop_where_their_batch_one_runs_stop(model, tiny_dir):
    """EOS, a stop word and max_steps end different rows at different rounds, each where it would alone."""
    from layerskip.checkpoints.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    free = [generate(model, p, GenerationConfig(max_steps=30, sampling=GREEDY)).token_ids for p in PROMPTS]
    configs = []
    for i, tokens in enumerate(free):
        if i % 3 == 0:
            configs.append(GenerationConfig(max_steps=30, sampling=GREEDY, stop_token_ids=(tokens[5 + i % 4],)))
        elif i % 3 == 1:
            word = decode(tokens[:8])[-2:]
            configs.append(GenerationConfig(max_steps=30, sampling=GREEDY, stop_words=(word,) if word.strip() else ()))
        else:
            configs.append(GenerationConfig(max_steps=4 + i, sampling=GREEDY))
    decodings = [AUTOREGRESSIVE, decoding_for(STRATEGIES[1], model.num_layers),
                 decoding_for(STRATEGIES[8], model.num_layers)]
    expected = [generate(model, p, c, decode=decode) for p, c in zip(PROMPTS, configs)]
    lengths = {len(e.token_ids) for e in expected}
    assert len(lengths) > 3 and {e.stats.stop_reason for e in expected} >= {"stop_token", "max_steps"}
    for decoding in decodings:
        results, _ = generate_many(model, PROMPTS, configs, decoding, decode=decode)
        assert [r.token_ids for r in results] == [e.token_ids for e in expected]
        assert [r.stats.stop_reason for r in results] == [e.stats.stop_reason for e in expected]


def test_adapter_rows_equal_batch_one(model, tiny_dir, tmp_path):
    unprepared = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(unprepared, 2, 0.3)
    save_adapter(init_adapter(unprepared, 2, "attention", model.num_layers - 1), tmp_path / "adapter")
    configs = [GenerationConfig(max_steps=12 + 2 * i, sampling=GREEDY) for i in range(len(PROMPTS))]
    expected = batch_one(model, PROMPTS, configs)
    for spec in (f"self_speculative:num_speculations=3,draft_adapter={tmp_path / 'adapter'}",
                 f"self_speculative:num_speculations=3,draft_adapter={tmp_path / 'adapter'},draft=prompt_lookup+model"):
        decoding = decoding_for(spec, model.num_layers)
        results, summary = generate_many(model, PROMPTS, configs, decoding)
        assert [r.token_ids for r in results] == expected, spec
        assert summary.num_draft_tokens > 0


def test_continuous_batching_rows_join_and_leave(model):
    """Three rows for eight requests, long prompts prefilled in chunks: the same outputs, and a request
    added while others run joins between rounds."""
    configs = [GenerationConfig(max_steps=6 + 2 * i, sampling=GREEDY) for i in range(len(PROMPTS))]
    expected = batch_one(model, PROMPTS, configs)
    decoding = decoding_for(STRATEGIES[0], model.num_layers)
    engine = Engine(model, decoding, max_rows=3, max_length=64, prefill_chunk=4)
    ids = [engine.add_request(p, c) for p, c in zip(PROMPTS[:4], configs[:4])]
    tokens: dict[int, list[int]] = {}
    most_running = 0
    steps = 0
    while engine.unfinished:
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finished:
                assert out.result.token_ids == tokens[out.request_id]
        most_running = max(most_running, engine.running)
        steps += 1
        if steps == 3:
            ids += [engine.add_request(p, c) for p, c in zip(PROMPTS[4:], configs[4:])]
    assert most_running == 3
    assert [tokens[i] for i in ids] == expected


def test_abort_frees_the_row(model):
    engine = Engine(model, AUTOREGRESSIVE, max_rows=2, max_length=64)
    a = engine.add_request(PROMPTS[0], GenerationConfig(max_steps=40, sampling=GREEDY))
    b = engine.add_request(PROMPTS[1], GenerationConfig(max_steps=5, sampling=GREEDY))
    c = engine.add_request(PROMPTS[2], GenerationConfig(max_steps=5, sampling=GREEDY))
    engine.step()
    engine.step()
    assert engine.running == 2 and engine.abort(a) and not engine.abort(a)
    assert engine.running == 1
    outs: dict[int, list[int]] = {}
    while engine.unfinished:
        for out in engine.step():
            outs.setdefault(out.request_id, []).extend(out.token_ids)
    assert a not in outs or len(outs[a]) < 40
    assert engine.abort(c) is False
    assert outs[c] == generate(model, PROMPTS[2], GenerationConfig(max_steps=5, sampling=GREEDY)).token_ids
    assert b in outs


def test_engine_refuses_bad_requests(model):
    engine = Engine(model, AUTOREGRESSIVE, max_rows=2, max_length=16)
    with pytest.raises(LayerskipError, match="empty"):
        engine.add_request([], GenerationConfig(max_steps=4))
    with pytest.raises(LayerskipError, match="`max_length` 16"):
        engine.add_request(PROMPTS[6], GenerationConfig(max_steps=4))
    with pytest.raises(LayerskipError, match="decode function"):
        engine.add_request(PROMPTS[0], GenerationConfig(max_steps=4, stop_words=("x",)))
    with pytest.raises(LayerskipError, match="`max_rows`"):
        Engine(model, AUTOREGRESSIVE, max_rows=0)


def test_batched_sampling_reproduces_the_full_model_distribution(tiny_dir):
    """Rows of one batch, each with its own seed, drafting with an early exit: the joint law of their
    first three tokens is the full model's (top-k 3)."""
    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(model, 1, 0.3)
    model = prepare_for_inference(model)
    sampling = SamplingConfig(sample=True, temperature=1.5, top_k=3, top_p=1.0)
    prompt = [0, 17, 42]
    exact = three_token_law(model, prompt, sampling)
    n = 1200
    configs = [GenerationConfig(max_steps=3, sampling=sampling, seed=seed) for seed in range(n)]
    decoding = Decoding(Strategy.parse("self_speculative:exit_layer=1,num_speculations=2").decoding(4).drafter)
    results, summary = generate_many(model, [prompt] * n, configs, decoding, batch_size=8)
    counts: dict[tuple, int] = {}
    for result in results:
        counts[tuple(result.token_ids)] = counts.get(tuple(result.token_ids), 0) + 1
    assert 0 < summary.num_accepted_tokens < summary.num_draft_tokens
    stat, df = chi2(counts, exact, n)
    assert stat < chi2_critical(df), (stat, df)
    # a row's draws are its own: the same seed alone gives the same tokens (rounds drafting as alone)
    fixed, _ = generate_many(model, [prompt] * 8, configs[:8], decoding, batch_control=False)
    alone = [generate(model, prompt, c, decoding).token_ids for c in configs[:8]]
    assert [r.token_ids for r in fixed] == alone


def test_cli_benchmark_and_correctness_batch_rows_together(tiny_dir, tmp_path, capsys):
    """--batch_size 3 on benchmark and correctness: the batched engine, the same tokens as one at a time."""
    import json

    from helpers import assert_one_line_error, run_cli
    from layerskip.cli import main

    common = ["--model", str(tiny_dir), "--dataset", "human_eval", "--num_samples", "5", "--max_steps", "12",
              "--dtype", "float32", "--no_progress", "True"]
    assert main(["correctness", *common, "--exit_layer", "2", "--num_speculations", "3", "--batch_size", "3",
                 "--output_dir", str(tmp_path / "c")]) == 0
    assert "0 mismatches" in capsys.readouterr().out
    docs = {}
    for size in (1, 3):
        out = tmp_path / f"b{size}"
        assert main(["benchmark", *common, "--sample", "False", "--batch_size", str(size), "--output_dir", str(out), "--compare",
                     "autoregressive", "self_speculative:exit_layer=2,num_speculations=3"]) == 0
        docs[size] = json.loads(next(out.glob("benchmark_*.json")).read_text())
        records = [json.loads(line) for line in next(out.glob("benchmark_*_samples.jsonl")).read_text().splitlines()]
        tokens = {(r["sample_id"], r["strategy"]): r["token_ids"] for r in records}
        docs[size]["tokens"] = tokens
        batch_rate = docs[size]["results"]["autoregressive"]["speed"]["batch_tokens_per_second"]
        assert (batch_rate["n"] == 0) == (size == 1)
    assert docs[1]["tokens"] == docs[3]["tokens"]
    assert all(r["matches_autoregressive"] == 1.0 for r in docs[3]["results"].values())
    assert_one_line_error(run_cli("benchmark", *common, "--batch_size", "0", "--output_dir", str(tmp_path / "x")),
                          "--batch_size must be >= 1, got 0")


def test_llm_generates_a_batch_like_one_at_a_time(tiny_dir):
    from layerskip import LLM, SamplingParams

    llm = LLM(str(tiny_dir), dtype="float32", exit_layer=2, num_speculations=3, batch_size=3)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    prompts = ["def add(a, b):", "x = 1", "class Point:", "import os", "for i in range(3):"]
    batched = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    alone = [llm.generate(p, params)[0].outputs[0].token_ids for p in prompts]
    assert batched == alone and all(len(t) == 10 for t in batched)
    with pytest.raises(LayerskipError, match="`batch_size` must be >= 1"):
        LLM(str(tiny_dir), dtype="float32", batch_size=0)
