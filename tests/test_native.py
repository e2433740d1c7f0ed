"""The native CPU kernels (layerskip/kernels/csrc, layerskip.kernels.native): the weight-streaming bf16 linear against
F.linear and the cached attention against SDPA, rows independent of how many are computed together,
under torch.compile, in the model, and their fallbacks."""

from __future__ import annotations

import pytest
import torch

from layerskip.kernels import native
from layerskip.kernels import policy
from layerskip.kernels.linear import PackedLinear, StreamedLinear, make_linear, prepare_for_inference
from layerskip.kernels.policy import linear_kernel
from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import load_model
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy

needs_native = pytest.mark.skipif(not policy.native_kernels(), reason=f"{policy.native_kernels_problem()}")


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T in float32 from the same bf16 inputs."""
    return torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())


@needs_native
@pytest.mark.parametrize(("out_features", "in_features"), [(200, 96), (17, 2), (64, 576), (33, 130)])
def test_streamed_linear_equals_f_linear_for_any_token_count(out_features: int, in_features: int) -> None:
    torch.manual_seed(0)
    weight = (torch.randn(out_features, in_features) / in_features**0.5).to(torch.bfloat16)
    layer = StreamedLinear(weight, None)
    for tokens in (1, 2, 5, 12, 13, 30):
        x = torch.randn(1, tokens, in_features).to(torch.bfloat16)
        y = layer(x)
        assert y.shape == (1, tokens, out_features) and y.dtype == torch.bfloat16
        # fp32 sums of bf16 products, rounded once to bf16: within bf16's half-ulp of the exact result
        torch.testing.assert_close(y.float(), reference(x, weight), rtol=8e-3, atol=1e-2)


@needs_native
def test_streamed_rows_do_not_depend_on_how_many_are_computed() -> None:
    """A one-token step and a (k+1)-token verification must give the same row bit for bit, across
    the 12-token register tile too."""
    torch.manual_seed(0)
    weight = torch.randn(100, 64).to(torch.bfloat16)
    bias = torch.randn(100).to(torch.bfloat16)
    layer = StreamedLinear(weight, bias)
    x = torch.randn(2, 15, 64).to(torch.bfloat16)
    together = layer(x)
    torch.testing.assert_close(together.float(), reference(x, weight, bias), rtol=2e-2, atol=5e-2)
    for b in range(2):
        for t in range(15):
            assert torch.equal(layer(x[b : b + 1, t : t + 1]), together[b : b + 1, t : t + 1])
    assert torch.equal(layer(x[:, 3:8]), together[:, 3:8])


@needs_native
def test_bad_packed_weight_is_refused_by_the_op() -> None:
    layer = StreamedLinear(torch.randn(40, 32).to(torch.bfloat16), None)
    with pytest.raises(RuntimeError, match="does not match the input width"):
        torch.ops.layerskip.bf16_linear(torch.randn(1, 48).to(torch.bfloat16), layer.packed, 40)
    with pytest.raises(RuntimeError, match="even"):
        torch.ops.layerskip.pack_bf16(torch.randn(4, 31).to(torch.bfloat16))


@needs_native
def test_kernel_choice_per_weight() -> None:
    bf16 = torch.randn(8, 16).to(torch.bfloat16)
    assert linear_kernel(bf16) == "streamed" and isinstance(make_linear(bf16, None), StreamedLinear)
    assert linear_kernel(torch.randn(8, 15).to(torch.bfloat16)) != "streamed"  # odd width: oneDNN's kernel
    assert linear_kernel(bf16, "packed") == "packed" and isinstance(make_linear(bf16, None, kernel="packed"), PackedLinear)
    assert linear_kernel(torch.randn(8, 16)) == "packed"  # float32 stays on oneDNN
    assert linear_kernel(bf16, "dense") == "dense"


def test_unknown_kernel_is_refused_before_any_weight_is_touched(tiny_dir) -> None:
    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        prepare_for_inference(model, kernel="fast")
    assert hasattr(model.model.layers[0].self_attn, "q_proj")  # still the checkpoint's own modules


@needs_native
def test_streamed_model_matches_the_onednn_model_and_keeps_the_head_weight(tiny_dir) -> None:
    greedy = GenerationConfig(max_steps=12, sampling=SamplingConfig(sample=False))
    streamed = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.bfloat16))
    packed = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.bfloat16), kernel="packed")
    assert isinstance(streamed.lm_head, StreamedLinear) and isinstance(streamed.model.layers[0].mlp.down_proj, StreamedLinear)
    tied = streamed.lm_head.weight is streamed.model.embed_tokens.weight
    assert tied == streamed.config.tie_word_embeddings and hasattr(streamed.lm_head, "weight")  # draft heads copy its rows
    tokens = torch.tensor([[0, 17, 42, 99, 7, 3]])
    torch.testing.assert_close(streamed(tokens).float(), packed(tokens).float(), rtol=0.03, atol=0.03)
    decoded = generate(streamed, [0, 17, 42], greedy).token_ids
    assert decoded[0] == int(streamed(torch.tensor([[0, 17, 42]]))[0, -1].argmax())  # the prefill's greedy choice
    drafted = Strategy.parse("self_speculative:exit_layer=2,num_speculations=3").decoding(streamed.num_layers)
    assert generate(streamed, [0, 17, 42], greedy, drafted).token_ids == decoded  # every row the same for any count


@needs_native
def test_streamed_op_traces_under_torch_compile_with_a_symbolic_token_count() -> None:
    torch.manual_seed(0)
    layer = StreamedLinear(torch.randn(48, 32).to(torch.bfloat16), None)
    compiled = torch.compile(lambda x: torch.nn.functional.silu(layer(x)) * 2, dynamic=True, fullgraph=True)
    for tokens in (1, 3, 7):
        x = torch.randn(1, tokens, 32).to(torch.bfloat16)
        torch.testing.assert_close(compiled(x), torch.nn.functional.silu(layer(x)) * 2, rtol=1e-2, atol=1e-2)


def test_native_kernels_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setenv("LAYERSKIP_NATIVE", "0")
    assert not policy.native_kernels() and "LAYERSKIP_NATIVE=0" in policy.native_kernels_problem()
    assert linear_kernel(torch.randn(8, 16).to(torch.bfloat16)) != "streamed"
    assert not policy.native_attention(torch.device("cpu"), 64)


def with_capabilities(monkeypatch, **changes) -> None:
    """Pretend the probe found ``changes`` (the policy's decisions recomputed from them)."""
    import dataclasses

    caps = dataclasses.replace(policy.probe(), **changes)
    monkeypatch.setattr(policy, "probe", lambda: caps)
    policy._native_kernels_problem.cache_clear()


def test_no_avx512_bf16_or_compiler_is_a_reason_not_a_failure(monkeypatch) -> None:
    monkeypatch.delenv("LAYERSKIP_NATIVE", raising=False)
    try:
        with_capabilities(monkeypatch, cpu_flags=frozenset({"avx2"}))
        assert policy.native_kernels_problem() == "the CPU has no AVX-512 BF16"
        assert linear_kernel(torch.randn(8, 16).to(torch.bfloat16)) != "streamed"
        with_capabilities(monkeypatch, cpu_flags=frozenset({"avx512_bf16", "avx512bw"}), machine="x86_64")
        monkeypatch.setattr(native.shutil, "which", lambda name, path=None: None)
        monkeypatch.delenv("CXX", raising=False)
        policy._native_kernels_problem.cache_clear()
        assert "no C++ compiler" in policy.native_kernels_problem()
        assert "C++ compiler" in policy.compile_problem(torch.device("cpu"))
    finally:
        monkeypatch.undo()
        policy._native_kernels_problem.cache_clear()
    assert policy.native_kernels_problem() == policy.native_kernels_problem()  # back to this machine's answer


def test_the_requested_kernel_decides_attention_too() -> None:
    """``streamed`` measures what ``auto`` gives users (native attention where it applies); ``packed`` and
    ``dense`` measure PyTorch's attention."""
    cpu = torch.device("cpu")
    native_here = policy.native_kernels()
    assert policy.native_attention(cpu, 64, "auto") == policy.native_attention(cpu, 64, "streamed") == native_here
    assert not policy.native_attention(cpu, 64, "packed") and not policy.native_attention(cpu, 64, "dense")
    assert not policy.native_attention(cpu, 12) and not policy.native_attention(cpu, 144)
    assert policy.native_attention(cpu, 256) == native_here  # Gemma 3's head size
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        policy.native_attention(cpu, 64, "fast")


def sdpa_reference(q, k, v, mask):
    """PyTorch's attention of q [B, T, H, D] over k, v [B, KV, C, D] -> [B, T, H, D]."""
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


@needs_native
@pytest.mark.parametrize(("batch", "heads", "kv_heads", "head_dim", "capacity"),
                         [(1, 9, 3, 64, 256), (2, 4, 2, 16, 41), (1, 8, 8, 128, 100), (1, 6, 1, 48, 17), (2, 4, 1, 256, 70)])
def test_cached_attention_equals_sdpa_and_rows_do_not_depend_on_the_query_count(batch, heads, kv_heads, head_dim,
                                                                               capacity) -> None:
    torch.manual_seed(0)
    T = 13
    q = torch.randn(batch, T, heads + kv_heads, head_dim)[:, :, :heads]  # a strided view, as the model passes it
    k, v = torch.randn(2, batch, kv_heads, capacity, head_dim).unbind(0)
    visible = torch.rand(batch, 1, T, capacity) < 0.5
    visible[..., 0] = True
    mask = torch.zeros(batch, 1, T, capacity).masked_fill_(~visible, float("-inf"))
    got = torch.ops.layerskip.cached_attention(q, k, v, mask, head_dim**-0.5)
    torch.testing.assert_close(got, sdpa_reference(q, k, v, mask), rtol=1e-5, atol=1e-5)
    for t in range(T):
        one = torch.ops.layerskip.cached_attention(q[:, t : t + 1], k, v, mask[:, :, t : t + 1], head_dim**-0.5)
        assert torch.equal(one, got[:, t : t + 1])


@needs_native
def test_cached_attention_never_reads_hidden_slots() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 32), torch.randn(1, 2, 10, 32), torch.randn(1, 2, 10, 32)
    mask = torch.zeros(1, 1, 2, 10)
    mask[..., 6:] = float("-inf")
    before = torch.ops.layerskip.cached_attention(q, k, v, mask, 0.2)
    k[:, :, 6:], v[:, :, 6:] = float("nan"), float("inf")  # unwritten slots may hold anything
    assert torch.equal(torch.ops.layerskip.cached_attention(q, k, v, mask, 0.2), before)


@needs_native
def test_cached_attention_refuses_bad_shapes() -> None:
    q, k = torch.randn(1, 1, 4, 24), torch.randn(1, 2, 5, 24)
    with pytest.raises(RuntimeError, match="D one of 16"):
        torch.ops.layerskip.cached_attention(q, k, k, torch.zeros(1, 1, 1, 5), 0.2)
    q, k = torch.randn(1, 1, 3, 16), torch.randn(1, 2, 5, 16)
    with pytest.raises(RuntimeError, match="KV dividing H"):
        torch.ops.layerskip.cached_attention(q, k, k, torch.zeros(1, 1, 1, 5), 0.2)
    with pytest.raises(RuntimeError, match="mask must be"):
        torch.ops.layerskip.cached_attention(torch.randn(1, 1, 4, 16), k, k, torch.zeros(1, 1, 2, 5), 0.2)


@needs_native
def test_float32_model_attends_through_the_native_kernel_like_sdpa(tiny_dir) -> None:
    """The tiny model's decoding with native attention follows PyTorch's attention, and its greedy
    self-speculative output equals its autoregressive output (float32 exactness)."""
    from layerskip.drafters.config import DraftConfig
    from layerskip.decoding.strategy import Strategy

    native_model = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.float32))
    sdpa_model = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.float32))
    assert native_model.model.layers[0].self_attn.native_queries > 0
    for layer in sdpa_model.model.layers:
        layer.self_attn.native_queries = 0
    greedy = GenerationConfig(max_steps=16, sampling=SamplingConfig(sample=False))
    prompt = [0, 17, 42, 99, 7, 150, 17, 42]
    expected = generate(native_model, prompt, greedy)
    assert expected.token_ids == generate(sdpa_model, prompt, greedy).token_ids
    decoding = Strategy("layerskip", "self_speculative", DraftConfig(2, 3)).decoding(native_model.num_layers)
    assert generate(native_model, prompt, greedy, decoding).token_ids == expected.token_ids


def blocks_of(model) -> list[tuple]:
    return [(layer, layer.attn_block, layer.mlp_block) for layer in model.model.layers]


def set_blocks(blocks: list[tuple], on: bool) -> None:
    for layer, attn, mlp in blocks:
        layer.attn_block, layer.mlp_block = (attn, mlp) if on else (None, None)


def decode_hidden(model, prompt: torch.Tensor, steps: torch.Tensor, one_at_a_time: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's hidden states ``[1, T, dim]`` of ``steps`` ``[1, T]`` after ``prompt`` over a static
    cache, and that cache's keys of layer 1: T tokens in one call, or one call per token."""
    from layerskip.model.cache import KVCache

    cache = KVCache(model.config, 1, 64, "cpu", model.attention_dtype)
    model.run_layers(model.embed(prompt), 0, model.num_layers, cache, 0)
    start = prompt.shape[1]
    if not one_at_a_time:
        return model.run_layers(model.embed(steps), 0, model.num_layers, cache, start), cache.keys[1]
    outs = [model.run_layers(model.embed(steps[:, t : t + 1]), 0, model.num_layers, cache, start + t)
            for t in range(steps.shape[1])]
    return torch.cat(outs, dim=1), cache.keys[1]


@needs_native
@pytest.mark.parametrize("bias", [False, True])
@torch.inference_mode()
def test_decoder_blocks_compute_the_module_path_and_rows_do_not_depend_on_the_token_count(tmp_path, bias: bool) -> None:
    """The one-call sublayers (layerskip.kernels.blocks) agree with the module path to bf16 rounding, write
    the same cache, and give a (k+1)-token verification the rows of k+1 one-token steps bit for bit."""
    from helpers import make_checkpoint

    model = prepare_for_inference(load_model(make_checkpoint(tmp_path, init_std=0.1, bias=bias), torch.device("cpu"),
                                             torch.bfloat16))
    blocks = blocks_of(model)
    assert all(attn is not None and mlp is not None for _, attn, mlp in blocks)
    prompt, steps = torch.tensor([[1, 17, 42, 99, 7, 3, 250, 12]]), torch.tensor([[5, 61, 88, 140, 2]])
    together, keys = decode_hidden(model, prompt, steps, one_at_a_time=False)
    alone, keys_alone = decode_hidden(model, prompt, steps, one_at_a_time=True)
    assert torch.equal(together, alone) and torch.equal(keys, keys_alone)
    set_blocks(blocks, False)
    modules, module_keys = decode_hidden(model, prompt, steps, one_at_a_time=False)
    set_blocks(blocks, True)
    torch.testing.assert_close(together.float(), modules.float(), rtol=0.05, atol=0.05)
    torch.testing.assert_close(keys, module_keys, rtol=0.02, atol=0.02)
    assert not torch.equal(together, torch.zeros_like(together))


@needs_native
@torch.inference_mode()
def test_decoder_blocks_keep_greedy_self_speculation_equal_to_autoregressive(tiny_dir) -> None:
    """With every decoding step on the one-call sublayers, bf16 self-speculation is exact by construction
    for drafts that stay within the native query count."""
    model = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.bfloat16))
    assert model.model.layers[0].attn_block is not None
    greedy = GenerationConfig(max_steps=40, sampling=SamplingConfig(sample=False))
    prompt = [0, 17, 42, 99, 7, 3]
    reference = generate(model, prompt, greedy).token_ids
    decoding = Strategy.parse("self_speculative:exit_layer=2,num_speculations=4").decoding(model.num_layers)
    assert generate(model, prompt, greedy, decoding).token_ids == reference


def test_decoder_blocks_are_not_attached_without_native_attention(tiny_dir, monkeypatch) -> None:
    monkeypatch.setenv("LAYERSKIP_NATIVE", "0")
    model = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.bfloat16))
    assert all(attn is None and mlp is None for _, attn, mlp in blocks_of(model))
