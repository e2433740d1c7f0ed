"""GGUF input: ``--model file.gguf`` converts once through transformers' GGUF support and loads like
any checkpoint; unsupported architectures and quantization types are one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_gguf

from layerskip.cli import main
from layerskip.errors import LayerskipError
from layerskip.checkpoints.gguf import check_gguf
from layerskip.checkpoints.loading import load, resolve_model_path

PROMPT = "def fib(n):\n    return n é"


@pytest.fixture(scope="module")
def gguf_files(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {
        "f32": write_gguf(tiny_dir, out / "tiny-f32.gguf"),
        "q8": write_gguf(tiny_dir, out / "tiny-q8.gguf", quantize={"ffn_up.weight": "Q8_0", "attn_v.weight": "Q4_1"}),
        "qwen": write_gguf(tiny_dir, out / "tiny-qwen.gguf", architecture="qwen2"),
        "q8_1": write_gguf(tiny_dir, out / "tiny-q8_1.gguf", quantize={"ffn_down.weight": "Q8_1"}),
    }


def transformers_logits(directory: Path, ids: list[int], gguf_file: str | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def our_logits(loaded, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(torch.tensor([ids]))[0]


def test_f32_gguf_loads_as_the_checkpoint_it_was_written_from(gguf_files, tiny_dir):
    loaded = load(str(gguf_files["f32"]), "cpu", "float32")
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    original = load(str(tiny_dir), "cpu", "float32")
    assert ids == original.tokenizer(PROMPT)["input_ids"]
    torch.testing.assert_close(our_logits(loaded, ids), our_logits(original, ids), rtol=0, atol=1e-5)
    gguf = gguf_files["f32"]
    torch.testing.assert_close(our_logits(loaded, ids), transformers_logits(gguf.parent, ids, gguf.name), rtol=1e-5, atol=1e-5)


def test_quantized_gguf_logits_equal_transformers_on_the_same_file(gguf_files, tiny_dir):
    gguf = gguf_files["q8"]
    loaded = load(str(gguf), "cpu", "float32")
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    ours = our_logits(loaded, ids)
    torch.testing.assert_close(ours, transformers_logits(gguf.parent, ids, gguf.name), rtol=1e-5, atol=1e-5)
    # the quantized tensors really changed the model (the comparison above is not F32 vs F32)
    assert (ours - our_logits(load(str(tiny_dir), "cpu", "float32"), ids)).abs().max() > 1e-4


def test_conversion_is_cached_and_redone_when_the_file_changes(gguf_files, tmp_path, layerskip_home):
    gguf = Path(tmp_path / "copy.gguf")
    gguf.write_bytes(gguf_files["f32"].read_bytes())
    first = resolve_model_path(str(gguf))
    assert first.parent == layerskip_home / "gguf" and (first / "model.safetensors").exists()
    marker = first / "marker"
    marker.write_text("kept")
    assert resolve_model_path(str(gguf)) == first and marker.exists()  # not converted again
    gguf.write_bytes(gguf_files["q8"].read_bytes())
    assert resolve_model_path(str(gguf)) != first
    assert not [p for p in (layerskip_home / "gguf").iterdir() if p.name.startswith(".")]  # no build leftovers


@pytest.mark.parametrize("kind, message", [("qwen", "unsupported GGUF architecture 'qwen2'"),
                                           ("q8_1", "quantization type Q8_1")])
def test_unsupported_gguf_is_one_error_line_before_conversion(gguf_files, kind, message, capsys, layerskip_home):
    assert main(["generate", "--model", str(gguf_files[kind]), "--prompt", "x", "--max_steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (layerskip_home / "gguf").exists() or not any((layerskip_home / "gguf").iterdir())


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(LayerskipError, match="not a readable GGUF file"):
        check_gguf(bad)
