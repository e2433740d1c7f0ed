"""The Python API (layerskip.api): LLM with its options as keyword arguments, SamplingParams checked,
generate / chat / stream, stop strings cut, vLLM's counters, and the README's snippet, run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import layerskip
from layerskip import LLM, SamplingParams
from layerskip.errors import LayerskipError

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(dtype="float32")


def test_the_readme_snippet_runs() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), {})
    assert out.getvalue().count(" length ") + out.getvalue().count(" stop ") >= 2


def test_the_shipped_model_drafts_with_its_recommendation_and_stays_exact(llm, tiny_dir) -> None:
    assert llm.strategy.speculative and llm.strategy.draft.draft == "prompt_lookup+model"
    plain = LLM(dtype="float32", generation_strategy="autoregressive")
    prompts = ["def fibonacci(n):", "import os\n\ndef list_files(path):"]
    drafted, reference = llm.generate(prompts, GREEDY), plain.generate(prompts, GREEDY)
    for mine, theirs in zip(drafted, reference):
        assert mine.outputs[0].token_ids == theirs.outputs[0].token_ids
        m = mine.outputs[0].metrics
        assert m["num_drafts"] >= 1 and m["num_accepted_tokens"] <= m["num_draft_tokens"]
        assert m["mean_acceptance_length"] == pytest.approx(1 + m["num_accepted_tokens"] / m["num_drafts"])
    assert [o.request_id for o in drafted] == ["0", "1"] and drafted[0].prompt == prompts[0]
    tiny = LLM(str(tiny_dir), dtype="float32")  # no recommendation: autoregressive
    assert not tiny.strategy.speculative and tiny.generate([1, 5, 9], GREEDY)[0].outputs[0].metrics["num_drafts"] == 0


def test_options_are_keyword_arguments_spelled_like_the_flags(tiny_dir) -> None:
    llm = LLM(str(tiny_dir), dtype="float32", exit_layer=2, num_speculations=3, draft="prompt_lookup+model",
              draft_control="payoff", threads=1)
    assert llm.strategy.speculative and llm.strategy.draft.draft_control == "payoff"
    out = llm.generate([1, 5, 9, 5, 9], SamplingParams(temperature=0.0, max_tokens=12))[0].outputs[0]
    assert len(out.token_ids) == 12 and out.finish_reason == "length"
    skipping = LLM(str(tiny_dir), dtype="float32", generation_strategy="self_speculative", num_speculations=2,
                   skip_layers='{"attn": [1], "mlp": [2]}')
    assert (skipping.strategy.draft.skip_attn, skipping.strategy.draft.skip_mlp) == ((1,), (2,))
    with pytest.raises(TypeError, match="unexpected keyword argument.*exit_layers"):
        LLM(str(tiny_dir), exit_layers=2)
    with pytest.raises(LayerskipError, match="`exit_layer` 9 outside 1..3"):
        LLM(str(tiny_dir), exit_layer=9, num_speculations=2)


def test_stop_strings_are_cut_and_streams_join_to_the_text(llm) -> None:
    full = llm.generate("def fibonacci(n):", SamplingParams(temperature=0.0, max_tokens=40))[0].outputs[0]
    word = full.text.strip().split()[2]
    stopped = llm.generate("def fibonacci(n):", SamplingParams(temperature=0.0, max_tokens=40, stop=[word]))[0].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == word
    assert word not in stopped.text and full.text.startswith(stopped.text)
    pieces = list(llm.stream("def fibonacci(n):", SamplingParams(temperature=0.0, max_tokens=40, stop=[word])))
    assert "".join(pieces) == stopped.text
    assert "".join(llm.stream("def fibonacci(n):", SamplingParams(temperature=0.0, max_tokens=40))) == full.text


def test_sampling_follows_the_request_seed(llm) -> None:
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, seed=3)
    first = llm.generate("def fibonacci(n):", params)[0].outputs[0].token_ids
    assert llm.generate("def fibonacci(n):", params)[0].outputs[0].token_ids == first


@pytest.mark.parametrize("kwargs, needle", [
    ({"temperature": -1.0}, "`temperature` must be a finite number >= 0"),
    ({"temperature": float("nan")}, "`temperature` must be a finite number >= 0"),
    ({"top_p": 0.0}, r"`top_p` must be in \(0, 1\]"),
    ({"top_k": -2}, "`top_k` must be an integer >= -1"),
    ({"max_tokens": 0}, "`max_tokens` must be an integer >= 1"),
    ({"seed": -1}, "`seed` must be an integer >= 0"),
    ({"stop": [3]}, "`stop` must be a string or a list of strings"),
    ({"stop_token_ids": [-1]}, "`stop_token_ids` must be token ids"),
])
def test_bad_sampling_params_are_one_error(kwargs, needle) -> None:
    with pytest.raises(LayerskipError, match=needle):
        SamplingParams(**kwargs)


def test_bad_requests_fail_before_any_decoding(llm) -> None:
    with pytest.raises(LayerskipError, match="no tokens"):
        llm.generate(["def f():", []], GREEDY)
    with pytest.raises(LayerskipError, match="2 sampling params for 1 prompts"):
        llm.generate(["def f():"], [GREEDY, GREEDY])
    with pytest.raises(LayerskipError, match="has no chat template"):
        llm.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(LayerskipError, match="outside the vocabulary"):
        llm.generate("def f():", SamplingParams(stop_token_ids=[10**6]))


def test_chat_goes_through_the_template(tiny_chat_dir) -> None:
    llm = LLM(str(tiny_chat_dir), dtype="float32")
    conversation = [{"role": "user", "content": "hello"}]
    one = llm.chat(conversation, GREEDY)
    two = llm.chat([conversation, conversation + [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "again"}]], GREEDY)
    assert one[0].outputs[0].token_ids == two[0].outputs[0].token_ids and len(two) == 2
    assert len(two[1].prompt_token_ids) > len(two[0].prompt_token_ids)


def test_import_layerskip_stays_light() -> None:
    assert layerskip.__version__ and "LLM" in layerskip.__all__
    with pytest.raises(AttributeError):
        layerskip.no_such_name  # noqa: B018
