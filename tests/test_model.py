"""Logits parity with transformers' LlamaForCausalLM on tiny checkpoints it wrote itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_checkpoint

from layerskip.model.cache import KVCache
from layerskip.checkpoints.loading import load_model

CASES = {
    "gqa": {},
    "mha": {"kv_heads": 4},
    "llama3_rope_tied": {
        "tie": True,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    },
    "linear_rope": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "bias": {"bias": True},
    "sharded": {"max_shard_size": "60KB"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case: str, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    directory = make_checkpoint(tmp_path, with_tokenizer=False, **CASES[case])
    if case == "sharded":
        assert (directory / "model.safetensors.index.json").exists()
    reference = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    ours = load_model(directory, torch.device("cpu"), torch.float32)
    tokens = torch.randint(0, 300, (2, 70), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).logits
        full = ours(tokens)
        cache = KVCache(ours.config, 2, 80, "cpu", torch.float32)
        chunked = torch.cat([ours(tokens[:, :40], cache, 0), ours(tokens[:, 40:41], cache, 40), ours(tokens[:, 41:], cache, 41)], 1)
    torch.testing.assert_close(full, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(chunked, expected, atol=2e-5, rtol=1e-4)


def test_early_exit_logits_are_unembedded_hidden_states(tiny_dir: Path) -> None:
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    ours = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    tokens = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden_states = reference(tokens, output_hidden_states=True).hidden_states
        for exit_layer in (1, 2, 3):
            expected = reference.lm_head(reference.model.norm(hidden_states[exit_layer]))
            torch.testing.assert_close(ours(tokens, exit_layer=exit_layer), expected, atol=2e-5, rtol=1e-4)


def test_rows_at_their_own_slots_match_each_row_alone(tiny_model) -> None:
    """Two rows of different lengths, each prefilled alone into its cache row, then decoded together
    from their own slots (per-row starts): each row's logits equal the row decoded alone."""
    model = tiny_model
    rows = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    new = torch.tensor([[20, 21], [22, 23]])
    with torch.no_grad():
        alone = [model(torch.tensor([r + new[i].tolist()]))[0, -2:] for i, r in enumerate(rows)]
        cache = KVCache(model.config, 2, 10, "cpu", torch.float32)
        for i, r in enumerate(rows):
            model(torch.tensor([r]), cache.narrow(i, 1), 0)
        batched = model.unembed(model.run_layers(model.embed(new), 0, model.num_layers, cache, [4, 6]))
    for i in range(2):
        torch.testing.assert_close(batched[i], alone[i], atol=2e-5, rtol=1e-4)


def test_rotary_with_sign_folded_sin_is_llamas_rotate_half_bit_for_bit() -> None:
    from layerskip.model.config import ModelConfig
    from layerskip.model.rope import RotaryTable, apply_rotary

    config = ModelConfig.from_dict({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
                                    "intermediate_size": 32, "vocab_size": 10})
    table = RotaryTable(config, torch.device("cpu"), torch.float32)
    positions = torch.tensor([[0, 3, 17, 200]])
    cos, sin = table.cos_sin(positions, 201)
    x = torch.randn(1, 4, 4, 16, generator=torch.Generator().manual_seed(0))  # [batch, seq, heads, head_dim]
    angles = positions[0, :, None].float() * table.inv_freq[None]
    ref_cos, ref_sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rotate_half = torch.cat([-x[..., 8:], x[..., :8]], -1)
    expected = x * ref_cos[None, :, None] + rotate_half * ref_sin[None, :, None]
    assert torch.equal(apply_rotary(x, cos, sin), expected)
