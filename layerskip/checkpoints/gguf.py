"""GGUF files (llama.cpp's format) as Hugging Face checkpoints.

A ``.gguf`` file is dequantized with transformers' own GGUF support (``from_pretrained(...,
gguf_file=...)``, which reads the file with the ``gguf`` package and undoes llama.cpp's q/k row
permutation) and written once as a float32 Hugging Face checkpoint directory: ``model.safetensors``
(no ``lm_head.weight`` when the embeddings are tied), ``config.json`` (without the
``quantization_config`` transformers attaches), ``generation_config.json`` and the tokenizer files,
chat template included. Every command then loads that directory like any other checkpoint.

The ``llama`` and ``gemma3`` architectures are accepted (transformers maps a Gemma 3 GGUF to a
``gemma3_text`` checkpoint, undoing llama.cpp's +1 on its norm weights); the architecture and every
tensor's quantization type are checked from the file's header before anything is dequantized.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from layerskip.model.config import HF_ARCHITECTURES, ModelConfig
from layerskip.errors import LayerskipError
from layerskip.files.storage import build_directory, layerskip_home, status

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_gguf(path: Path) -> None:
    """Fail with one line unless ``path`` is a readable llama or gemma3 GGUF whose tensors can all be dequantized.

    Reads only the header (the tensor data is memory-mapped) and dequantizes one row of one tensor
    per quantization type.
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields.get("general.architecture")
        architecture = field.contents() if field is not None else None
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors ... on bad files
        raise LayerskipError(f"{path} is not a readable GGUF file ({_first_line(exc)})") from None
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise LayerskipError(
            f"{path.name}: unsupported GGUF architecture {architecture!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    checked: set[int] = set()
    for tensor in reader.tensors:
        if tensor.tensor_type in checked:
            continue
        rows = tensor.data.reshape(-1, tensor.data.shape[-1])
        try:
            gguf.dequantize(rows[:1], tensor.tensor_type)
        except NotImplementedError:
            raise LayerskipError(
                f"{path.name}: tensor {tensor.name} has quantization type {tensor.tensor_type.name}, "
                "which the gguf package cannot dequantize"
            ) from None
        checked.add(tensor.tensor_type)


def convert_gguf(path: Path, out: Path) -> None:
    """Dequantize the llama or gemma3 GGUF ``path`` into a float32 Hugging Face checkpoint in the directory ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(path)
    source, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    except (ValueError, NotImplementedError, KeyError, OSError) as exc:
        raise LayerskipError(f"cannot convert {path.name}: {_first_line(exc)}") from None
    config = model.config.to_diff_dict()
    config.pop("quantization_config", None)
    parsed = ModelConfig.from_dict(config)  # one clear line if transformers mapped it to an architecture we do not run
    config["architectures"] = [HF_ARCHITECTURES[parsed.model_type]]
    tied = bool(config.get("tie_word_embeddings"))
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.generation_config.to_json_file(str(out / "generation_config.json"))
    tokenizer.save_pretrained(str(out))


def gguf_checkpoint(path: Path) -> Path:
    """The Hugging Face checkpoint converted from the GGUF file ``path`` (converted on first use).

    Cached in ``$LAYERSKIP_HOME/gguf/STEM-KEY``, where KEY hashes the file's absolute path, size
    and modification time: a changed file is converted again.
    """
    path = path.resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = layerskip_home() / "gguf" / f"{path.stem}-{key}"
    if not dest.is_dir():
        check_gguf(path)
        status(f"converting {path.name} to a float32 Hugging Face checkpoint in {dest} (once; later runs reuse it)")
    return build_directory(dest, lambda tmp: convert_gguf(path, tmp))
