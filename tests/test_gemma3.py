"""Gemma 3's text decoder against transformers' ``Gemma3ForCausalLM`` on a tiny random checkpoint whose
sliding window (8) is shorter than the prompts, with local and global layers mixed: float32 logits
(with and without the KV cache, prepared kernels included), early exits, greedy ``generate`` token
for token, self-speculative decoding (fixed and dynamic exits, skipped sublayers) equal to autoregressive; the config layouts, the kernel policy
and the refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from helpers import assert_one_line_error, make_gemma3_checkpoint, run_cli, write_corpus

from layerskip.checkpoints.loading import load, load_model, text_decoder_weights
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate, generate_many
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy
from layerskip.drafters.config import DraftConfig, build_drafter
from layerskip.errors import LayerskipError
from layerskip.kernels import policy
from layerskip.kernels.linear import prepare_for_inference
from layerskip.model.adapter import init_adapter, save_adapter
from layerskip.model.cache import KVCache
from layerskip.model.config import ModelConfig
from layerskip.model.gemma3 import Gemma3DecoderLayer, Gemma3ForCausalLM
from layerskip.drafters.adapter import AdapterDrafter
from layerskip.training.adapter_trainer import AdapterTrainConfig, AdapterTrainer

CPU = torch.device("cpu")
GREEDY = GenerationConfig(max_steps=24, sampling=SamplingConfig(sample=False))
PROMPTS = [[0, *range(40, 60)], [0, 17, 99, 5, 230, 41, 8, 77, 150, 3, 12, 64, 200]]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_gemma3_checkpoint(tmp_path_factory.mktemp("gemma3"))


@pytest.fixture(scope="module")
def reference(gemma_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gemma_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prepared(gemma_dir: Path) -> Gemma3ForCausalLM:
    return prepare_for_inference(load_model(gemma_dir, CPU, torch.float32))


def tokens(n: int = 30, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 300, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_float32_logits_equal_transformers_past_the_window(gemma_dir, reference, prepared) -> None:
    ids = tokens()
    want = reference(ids).logits
    model = load_model(gemma_dir, CPU, torch.float32)
    assert isinstance(model, Gemma3ForCausalLM) and model.kinds == (1, 0, 1, 1)
    torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)  # no cache: causal + band mask
    torch.testing.assert_close(model(ids, KVCache(model.config, 1, 48, CPU, torch.float32)), want, rtol=1e-5, atol=1e-5)
    cache = KVCache(prepared.config, 1, 48, CPU, torch.float32)  # prefill, then one token a step past the window
    stepped = [prepared(ids[:, :10], cache, 0)] + [prepared(ids[:, i : i + 1], cache, i) for i in range(10, 30)]
    torch.testing.assert_close(torch.cat(stepped, dim=1), want, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_the_window_is_exact_one_position_more_changes_the_logits(gemma_dir, reference) -> None:
    ids = tokens()
    model = load_model(gemma_dir, CPU, torch.float32)
    model.config = replace(model.config, sliding_window=9)
    assert not torch.allclose(model(ids, KVCache(model.config, 1, 48, CPU, torch.float32)), reference(ids).logits, atol=1e-3)


@torch.inference_mode()
def test_an_early_exit_is_that_layers_state_through_the_final_norm_and_head(gemma_dir, reference, prepared) -> None:
    ids = tokens()
    states = reference(ids, output_hidden_states=True).hidden_states
    for exit_layer in (1, 2, 3):
        want = reference.lm_head(reference.model.norm(states[exit_layer]))
        cache = KVCache(prepared.config, 1, 48, CPU, torch.float32)
        got = prepared.unembed(prepared.run_layers(prepared.embed(ids), 0, exit_layer, cache, 0))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_greedy_generation_equals_transformers_generate(reference, prepared) -> None:
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        want = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY.max_steps,
                                  do_sample=False, pad_token_id=2, eos_token_id=None)[0, len(prompt):].tolist()
        assert generate(prepared, prompt, GREEDY).token_ids == want


def test_self_speculative_equals_autoregressive(prepared) -> None:
    decoding = Strategy.parse("self_speculative:exit_layer=2,num_speculations=3").decoding(prepared.num_layers)
    for prompt in PROMPTS:
        result = generate(prepared, prompt, GREEDY, decoding)
        assert result.token_ids == generate(prepared, prompt, GREEDY).token_ids
        assert result.stats.draft_forwards > 0


@pytest.mark.parametrize("draft", [
    DraftConfig(exit_layer=3, num_speculations=4, criteria="top2_margin", threshold=0.05),  # exits + state propagation
    DraftConfig(num_speculations=3, skip_attn=(1,), skip_mlp=(2,)),  # a global layer's attention skipped
])
def test_dynamic_exits_and_skipped_sublayers_stay_exact(prepared, draft) -> None:
    for prompt in PROMPTS:
        got = generate(prepared, prompt, GREEDY, Decoding(build_drafter(draft, prepared.num_layers)))
        assert got.token_ids == generate(prepared, prompt, GREEDY).token_ids


@torch.inference_mode()
def test_final_logit_softcapping_and_the_bf16_embedding_scale(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    path = make_gemma3_checkpoint(tmp_path, final_logit_softcapping=2.0)
    ids = tokens(12)
    reference = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    got = load_model(path, CPU, torch.float32)(ids)
    assert got.abs().max() < 2.0
    torch.testing.assert_close(got, reference(ids).logits, rtol=1e-5, atol=1e-5)
    half = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    model = load_model(path, CPU, torch.bfloat16)
    assert torch.equal(model.embed(ids), half.model.embed_tokens(ids))
    model = load_model(path, CPU, torch.bfloat16)
    model.config = replace(model.config, hidden_size=70)  # sqrt(70) = 8.3666 is 8.375 in bf16: rounded first
    assert torch.equal(model.embed(ids), model.model.embed_tokens(ids) * torch.tensor(70**0.5, dtype=torch.bfloat16))


def test_config_layouts_agree_and_round_trip_through_transformers(gemma_dir) -> None:
    from transformers import Gemma3TextConfig

    raw = json.loads((gemma_dir / "config.json").read_text())
    config = ModelConfig.from_dict(raw)
    assert config.gemma3.layer_types == tuple(raw["layer_types"]) and config.sliding_window == 8
    assert config.context_limit == 1024  # the window is run exactly: it bounds nothing
    legacy = {k: v for k, v in raw.items() if k not in ("rope_parameters", "layer_types")}  # transformers 4.x
    legacy.update(rope_theta=1_000_000.0, rope_local_base_freq=10000.0, sliding_window_pattern=2)
    parsed = ModelConfig.from_dict(legacy)  # every second layer global
    assert parsed.gemma3.layer_types == ("sliding_attention", "full_attention") * 2 and parsed.rope_theta == 1e6
    assert parsed.gemma3.local_rope_theta == 10000.0 and parsed.rope_scaling is None
    text = {k: v for k, v in raw.items() if k != "eos_token_id"}
    multimodal = {"model_type": "gemma3", "eos_token_id": [1, 106], "text_config": text}
    assert ModelConfig.from_dict(multimodal) == replace(config, eos_token_ids=(1, 106))
    back = Gemma3TextConfig(**config.to_hf_dict())
    assert back.layer_types == raw["layer_types"] and back.rope_parameters == raw["rope_parameters"]
    assert back.query_pre_attn_scalar == 24 and back.sliding_window == 8 and back.tie_word_embeddings
    with pytest.raises(LayerskipError, match="attn_logit_softcapping"):
        ModelConfig.from_dict({**raw, "attn_logit_softcapping": 50.0})


def test_a_multimodal_checkpoints_text_decoder_weights_are_found() -> None:
    w = torch.zeros(1)
    state = {"model.language_model.layers.0.mlp.up_proj.weight": w, "model.vision_tower.x": w, "lm_head.weight": w}
    assert set(text_decoder_weights(state)) == {"model.layers.0.mlp.up_proj.weight", "lm_head.weight"}
    assert set(text_decoder_weights({"language_model.model.norm.weight": w})) == {"model.norm.weight"}
    plain = {"model.norm.weight": w}
    assert text_decoder_weights(plain) is plain


def test_the_policy_keeps_llama_kernels_off_gemma_layers(gemma_dir) -> None:
    config = ModelConfig.from_file(gemma_dir / "config.json")
    assert not policy.decoder_blocks(True, ["streamed", "streamed"], False, config)
    assert policy.native_attention(CPU, 256) == policy.native_kernels()  # Gemma 3's real head size
    assert not policy.native_attention(CPU, 192)
    assert "Gemma 3" in policy.compile_problem(CPU, config)
    model = prepare_for_inference(load_model(gemma_dir, CPU, torch.bfloat16))  # streamed where the CPU has it
    assert all(getattr(layer, "attn_block", None) is None for layer in model.model.layers)
    assert all(getattr(layer, "mlp_block", None) is None for layer in model.model.layers)


@pytest.mark.skipif(not policy.native_kernels(), reason=f"{policy.native_kernels_problem()}")
@torch.inference_mode()
def test_bf16_norms_run_as_one_native_call_with_the_aten_paths_arithmetic(gemma_dir) -> None:
    """Prepared in bf16 on the native kernels every norm (and the q/k pair) is one native call whose output
    equals the ATen path's (float32 inside, rounded once; a rare last-bit tie apart); float32 keeps ATen."""
    model = prepare_for_inference(load_model(gemma_dir, CPU, torch.bfloat16))
    layer = model.model.layers[0]
    assert layer.pre_feedforward_layernorm.native_scale is not None and layer.self_attn.qk_scale is not None
    x = torch.randn(3, 7, model.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    norm = layer.post_attention_layernorm
    native = norm(x)
    norm.native_scale, kept = None, norm.native_scale
    reference = norm(x)
    norm.native_scale = kept
    assert native.dtype == torch.bfloat16 and (native.float() - reference.float()).abs().max() <= 2 ** -7 * reference.float().abs().max()
    assert (native == reference).float().mean() > 0.99
    attn = layer.self_attn
    qk = torch.randn(2, 5, attn.n_heads + attn.n_kv, attn.head_dim).to(torch.bfloat16)
    both = torch.ops.layerskip.gemma_rms_norm(qk, attn.qk_scale, attn.q_norm.eps)
    apart = torch.cat([attn.q_norm(qk[:, :, : attn.n_heads]), attn.k_norm(qk[:, :, attn.n_heads :])], dim=2)
    assert (both == apart).float().mean() > 0.99
    eager = load_model(gemma_dir, CPU, torch.bfloat16)
    ids = tokens()
    assert (model(ids).argmax(-1) == eager(ids).argmax(-1)).float().mean() > 0.9
    assert prepare_for_inference(load_model(gemma_dir, CPU, torch.float32)).model.norm.native_scale is not None
    with pytest.raises(RuntimeError, match="multiple of the scale"):
        torch.ops.layerskip.gemma_rms_norm(qk.reshape(-1, attn.head_dim)[: attn.qk_scale.shape[0] + 1], attn.qk_scale, 1e-6)


def test_compile_is_refused_in_one_line(gemma_dir) -> None:
    with pytest.raises(LayerskipError, match="`compile`: torch.compile is not available for Gemma 3"):
        load(str(gemma_dir), "cpu", "float32", compile=True)
    assert_one_line_error(run_cli("generate", "--model", str(gemma_dir), "--prompt", "x", "--compile", "True"), "Gemma 3")


@pytest.mark.parametrize("architecture", ["attention", "decoder_layer"])
def test_an_adapter_is_a_global_gemma_layer_and_drafting_with_it_stays_exact(gemma_dir, architecture, tmp_path) -> None:
    """The adapter block is Gemma's own layer (q/k norms, (1 + w) norms, gated GELU for ``decoder_layer``),
    run as a global layer (here a copy of layer 1, global); greedy drafting with it, one row and a batch,
    equals autoregressive."""
    model = load_model(gemma_dir, CPU, torch.float32)
    adapter = init_adapter(model, 2, architecture, 1)
    assert isinstance(adapter.block, Gemma3DecoderLayer) and model.kinds[1] == 0 and adapter.kind == 0
    assert hasattr(adapter.block, "mlp") == (architecture == "decoder_layer")
    if architecture == "decoder_layer":  # the copy of the global layer computes what that layer computes
        hidden = torch.randn(1, 12, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        _, cos, sin, mask = model.slot_inputs(None, 0, 12, 1)
        torch.testing.assert_close(adapter(hidden, cos, sin), model.layer_loop(hidden, 1, 2, None, None, cos, sin, mask))
    save_adapter(adapter, tmp_path)
    prepared = prepare_for_inference(load_model(gemma_dir, CPU, torch.float32))
    drafter = AdapterDrafter(tmp_path, 3)
    for prompt in PROMPTS:
        got = generate(prepared, prompt, GREEDY, Decoding(drafter))
        assert got.token_ids == generate(prepared, prompt, GREEDY).token_ids and got.stats.draft_forwards > 0
    batch, _ = generate_many(prepared, PROMPTS, GREEDY, Decoding(AdapterDrafter(tmp_path, 3)), batch_control=False)
    assert [r.token_ids for r in batch] == [generate(prepared, p, GREEDY).token_ids for p in PROMPTS]
    weights = tmp_path / "adapter.safetensors"  # stored in bf16 (a shipped adapter's size): still exact in float32
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
    drafter = AdapterDrafter(tmp_path, 3)
    for prompt in PROMPTS:
        assert generate(prepared, prompt, GREEDY, Decoding(drafter)).token_ids == generate(prepared, prompt, GREEDY).token_ids
    assert drafter.adapter is not None and drafter.adapter.block.input_layernorm.weight.dtype == torch.float32


def test_train_adapter_trains_a_gemma_adapter(gemma_dir, tmp_path) -> None:
    """``layerskip train-adapter`` on a Gemma 3 base: features, training through the frozen (1 + w) norm
    and tied head, an adapter the drafter loads."""
    out = tmp_path / "run"
    config = AdapterTrainConfig(model=str(gemma_dir), exit_layer=2, corpus=str(write_corpus(tmp_path)),
                                output_dir=str(out), architecture="decoder_layer", seq_len=32, max_tokens=1024,
                                top_k=8, draft_vocab=120, steps=4, batch_size=4, eval_every=4, eval_prompts=1,
                                eval_tokens=8, device="cpu")
    AdapterTrainer(config).run(progress=False)
    record = json.loads((out / "adapter" / "adapter.json").read_text())
    assert record["architecture"] == "decoder_layer" and record["intermediate_size"] == 128
    prepared = prepare_for_inference(load_model(gemma_dir, CPU, torch.float32))
    drafter = AdapterDrafter(out / "adapter", 2, draft_vocab=120)
    for prompt in PROMPTS:
        assert generate(prepared, prompt, GREEDY, Decoding(drafter)).token_ids == generate(prepared, prompt, GREEDY).token_ids
