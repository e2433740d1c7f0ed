"""The compiled decoding step (``layerskip.kernels.compiled``): the same tokens as eager decoding, exact
self-speculation against itself, and its refusals as one error line before any work."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_one_line_error, dampen_layers, run_cli
from layerskip.kernels.compiled import compile_layers
from layerskip.kernels.policy import compile_problem
from layerskip.drafters.config import DraftConfig
from layerskip.kernels.linear import prepare_for_inference
from layerskip.decoding.settings import AUTOREGRESSIVE, GenerationConfig
from layerskip.decoding.loop import generate, generate_many
from layerskip.checkpoints.loading import load_model
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy

GREEDY = SamplingConfig(sample=False)
PROMPT = [0, 17, 42, 99, 7, 150, 17, 42]

needs_compiler = pytest.mark.skipif(compile_problem(torch.device("cpu")) is not None, reason="no C++ compiler")


@needs_compiler
def test_compiled_decoding_equals_eager_and_self_speculation_stays_exact(tiny_dir):
    eager, model = (load_model(tiny_dir, torch.device("cpu"), torch.float32) for _ in range(2))
    for m in (eager, model):
        dampen_layers(m, 2, 0.3)  # exit-2 drafts agree with the full model often
    prepare_for_inference(eager)
    compile_layers(prepare_for_inference(model, for_compile=True))
    compiled_calls = []
    real = model.compiled_layers

    def counting(*args):
        compiled_calls.append(args[0].shape[1])  # T of each compiled call
        return real(*args)

    model.compiled_layers = counting
    config = GenerationConfig(max_steps=20, sampling=GREEDY)
    expected = generate(eager, PROMPT, config).token_ids
    assert generate(model, PROMPT, config).token_ids == expected
    assert compiled_calls.count(1) == 19  # every decoding step went through the compiled loop
    for draft in (DraftConfig(2, 3), DraftConfig(1, 2, draft="prompt_lookup+model")):
        decoding = Strategy("layerskip", "self_speculative", draft).decoding(model.num_layers)
        got = generate(model, PROMPT, config, decoding)
        assert got.token_ids == expected and 0 < got.stats.accepted_tokens < got.stats.drafted_tokens
    assert max(compiled_calls) > 1  # verifications of several tokens too
    with torch.inference_mode():
        ids = torch.tensor([PROMPT])
        torch.testing.assert_close(model(ids), eager(ids), rtol=1e-4, atol=1e-4)  # a cacheless forward: eager layers
    # batches of rows at their own slots through the compiled loop: each row as the eager batch-1 run
    prompts = [PROMPT, PROMPT[:3], PROMPT[1:] + PROMPT[:2]]
    alone = [generate(eager, p, config).token_ids for p in prompts]
    calls = len(compiled_calls)
    for decoding in (AUTOREGRESSIVE, Strategy("layerskip", "self_speculative", DraftConfig(2, 3)).decoding(model.num_layers)):
        results, _ = generate_many(model, prompts, config, decoding, batch_control=False)
        assert [r.token_ids for r in results] == alone
    assert len(compiled_calls) > calls


def test_compile_bad_input_is_one_line_before_loading(tiny_dir, monkeypatch):
    assert_one_line_error(run_cli("generate", "--model", str(tiny_dir), "--compile", "True", "--quantize", "int8",
                                  "--prompt", "x"), "--compile applies to --quantize none")
    monkeypatch.setattr("layerskip.kernels.native.shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert_one_line_error(run_cli("generate", "--model", str(tiny_dir), "--compile", "True", "--prompt", "x"),
                          "--compile: torch.compile on a CPU needs a C++ compiler")


@needs_compiler
def test_two_compiled_models_in_one_process_each_decode_their_own_tokens(tiny_dir):
    """One-token calls skip most guards once checked (layerskip.kernels.compiled): the graphs of two models
    (same code, different weights) must still never be mixed up."""
    eager = [load_model(tiny_dir, torch.device("cpu"), torch.float32) for _ in range(2)]
    compiled = [load_model(tiny_dir, torch.device("cpu"), torch.float32) for _ in range(2)]
    for pair in (eager, compiled):
        dampen_layers(pair[1], 1, 0.2)  # the second model differs from the first
        for m in pair:
            prepare_for_inference(m, for_compile=m in compiled)
    for m in compiled:
        compile_layers(m)
    config = GenerationConfig(max_steps=12, sampling=GREEDY)
    expected = [generate(m, PROMPT, config).token_ids for m in eager]
    assert expected[0] != expected[1]
    for _ in range(2):  # alternate: each model's one-token graph reused after the other's ran
        assert [generate(m, PROMPT, config).token_ids for m in compiled] == expected


def test_guard_skipping_is_feature_tested(monkeypatch) -> None:
    """The private set_stance knob is used only where this torch has it (else every guard is checked)."""
    from layerskip.kernels import compiled

    assert compiled.skips_guards() == ("skip_guard_eval_unsafe" in __import__("inspect").signature(torch.compiler.set_stance).parameters)
    monkeypatch.setattr(torch.compiler, "set_stance", lambda stance="default", *, force_backend=None: None)
    assert not compiled.skips_guards()
    monkeypatch.delattr(torch.compiler, "set_stance")
    assert not compiled.skips_guards()
