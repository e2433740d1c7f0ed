"""Inference-time linear layers (layerskip.kernels.linear) against the unfused reference model."""

from __future__ import annotations

import pytest
import torch

from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.errors import LayerskipError
from layerskip.kernels import policy
from layerskip.kernels.linear import FusedLinear, Int8Linear, PackedLinear, StreamedLinear, prepare_for_inference
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import load, load_model
from layerskip.decoding.sampling import SamplingConfig

GREEDY = SamplingConfig(sample=False)


@pytest.mark.parametrize("tokens", [1, 5, 9])
def test_fused_float32_equals_separate_projections(tokens: int) -> None:
    torch.manual_seed(0)
    parts = [torch.nn.Linear(32, n, bias=True) for n in (32, 16, 16)]
    x = torch.randn(2, tokens, 32)
    got = FusedLinear(parts)(x)
    for layer, out in zip(parts, got):
        torch.testing.assert_close(out, layer(x), rtol=1e-6, atol=1e-6)


def test_grouped_fusion_returns_one_view_per_group() -> None:
    torch.manual_seed(0)
    parts = [torch.nn.Linear(32, n, bias=False) for n in (32, 16, 16)]
    x = torch.randn(1, 3, 32)
    qk, v = FusedLinear(parts, groups=(2, 1))(x)
    torch.testing.assert_close(qk, torch.cat([parts[0](x), parts[1](x)], -1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v, parts[2](x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="groups"):
        FusedLinear(parts, groups=(2, 2))


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch build")
needs_onednn_bf16 = pytest.mark.skipif(
    not policy.probe().native_bf16,
    reason="this CPU has no native bf16 (oneDNN packs bf16 only with AVX-512 BF16 or AMX)",
)


@needs_onednn_bf16
def test_packed_bfloat16_linear_matches_f_linear_and_rows_are_independent() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 200, bias=False).to(torch.bfloat16)
    packed = PackedLinear(layer.weight, None)
    x = torch.randn(1, 9, 96, dtype=torch.bfloat16)
    together = packed(x)
    assert together.dtype == torch.bfloat16
    torch.testing.assert_close(together.float(), layer(x).float(), rtol=2e-2, atol=2e-2)
    for i in range(9):
        assert torch.equal(packed(x[:, i : i + 1]), together[:, i : i + 1])


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_rows_do_not_depend_on_how_many_are_computed(bias: bool) -> None:
    """A one-token step and a (k+1)-token verification must give the same row bit for bit."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 200, bias=bias)
    packed = PackedLinear(layer.weight, layer.bias)
    x = torch.randn(1, 9, 96)
    together = packed(x)
    torch.testing.assert_close(together, layer(x), rtol=1e-5, atol=1e-5)
    for i in range(9):
        assert torch.equal(packed(x[:, i : i + 1]), together[:, i : i + 1])
    assert torch.equal(packed(x[:, :4]), together[:, :4])
    assert not any(t is packed.packed for t in packed.state_dict().values())


@needs_onednn
def test_prepared_float32_model_runs_packed_kernels_and_keeps_the_head_weight(tiny_dir) -> None:
    model = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.float32))
    layer = model.model.layers[0]
    kernels = [layer.self_attn.qkv_proj.inner, layer.self_attn.o_proj, layer.mlp.gate_up_proj.inner, layer.mlp.down_proj, model.lm_head]
    assert all(isinstance(k, PackedLinear) for k in kernels)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == model.config.tie_word_embeddings  # the head keeps its weight (the draft heads copy rows of it)
    assert not hasattr(layer.mlp.down_proj, "weight")  # projections keep only the packed copy
    assert model.dtype == torch.float32


def test_bfloat16_model_on_cpu_attends_in_float32_and_follows_its_float32_logits(tiny_dir) -> None:
    """16-bit models keep their weights 16-bit but rotate, cache and attend in float32 on a CPU."""
    reference = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    model = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.bfloat16))
    assert model.dtype == torch.bfloat16 and model.attention_dtype == torch.float32
    assert isinstance(model.lm_head, (PackedLinear, StreamedLinear)) == policy.probe().native_bf16
    tokens = torch.tensor([[0, 17, 42, 99, 7, 3]])
    logits = model(tokens)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference(tokens), rtol=0.05, atol=0.05)
    out = generate(model, [0, 17, 42], GenerationConfig(max_steps=8, sampling=GREEDY))
    assert out.token_ids[0] == int(model(torch.tensor([[0, 17, 42]]))[0, -1].argmax())  # the prefill's greedy choice
    step = model(torch.tensor([[0, 17, 42, out.token_ids[0]]]))[0, -1].float()  # and the next, a full forward away
    assert step[out.token_ids[1]] >= step.max() - 0.05  # the chosen token, up to bf16 rounding of near-ties


def test_int8_linear_is_its_dequantized_weight() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    q = Int8Linear(layer.weight, layer.bias)
    x = torch.randn(3, 64)
    reference = torch.nn.functional.linear(x, q.dequantized(), layer.bias)
    torch.testing.assert_close(q(x), reference, rtol=2e-2, atol=2e-2)  # bf16 activations in the kernel
    assert (q.dequantized() - layer.weight).abs().max() <= q.scale.max() / 2 + 1e-7


def test_prepared_model_logits_match_reference(tiny_dir) -> None:
    reference = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    fused = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.float32))
    int8 = prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.float32), "int8")
    tokens = torch.tensor([[0, 17, 42, 99, 7, 3]])
    expected = reference(tokens)
    torch.testing.assert_close(fused(tokens), expected, rtol=1e-5, atol=1e-5)
    assert not hasattr(fused.model.layers[0].self_attn, "q_proj")
    assert (int8(tokens) - expected).abs().max() < 0.1 * expected.abs().max()


def test_int8_self_speculative_equals_its_autoregressive_output(tiny_dir) -> None:
    model = load(str(tiny_dir), "cpu", "float32", "int8").model
    prompt = [0, 17, 42, 99, 7]
    expected = generate(model, prompt, GenerationConfig(max_steps=30, sampling=GREEDY))
    for exit_layer, k in [(1, 4), (2, 2), (3, 7)]:
        got = generate(model, prompt, GenerationConfig(max_steps=30, sampling=GREEDY), Decoding(EarlyExitDrafter(exit_layer, k)))
        assert got.token_ids == expected.token_ids


def test_unknown_quantization_is_one_error_line(tiny_dir) -> None:
    with pytest.raises(LayerskipError, match="`quantize`"):
        load(str(tiny_dir), "cpu", "float32", "int4")


def test_auto_dtype_is_bf16_only_for_layers_that_stream_enough_bytes(monkeypatch) -> None:
    import dataclasses

    from layerskip.checkpoints import loading
    from layerskip.model.config import ModelConfig

    def config(hidden: int, inter: int) -> ModelConfig:
        return ModelConfig.from_dict({"model_type": "llama", "hidden_size": hidden, "num_attention_heads": 9,
                                      "num_key_value_heads": 3, "num_hidden_layers": 2, "intermediate_size": inter,
                                      "vocab_size": 100})

    small, large = config(288, 768), config(576, 1536)  # 2.8 and 13.5 MiB of float32 per layer
    assert policy.layer_weight_bytes(large) == 4 * 576 * (2 * 576 + 2 * 192 + 3 * 1536)
    cpu = torch.device("cpu")
    found = policy.probe()
    monkeypatch.setattr(policy, "probe", lambda: dataclasses.replace(found, native_bf16=True))
    assert loading.resolve_dtype("auto", cpu, large) == torch.bfloat16
    assert loading.resolve_dtype("auto", cpu, small) == torch.float32
    assert loading.resolve_dtype("float32", cpu, large) == torch.float32
    monkeypatch.setattr(policy, "probe", lambda: dataclasses.replace(found, native_bf16=False))
    assert loading.resolve_dtype("auto", cpu, large) == torch.float32
