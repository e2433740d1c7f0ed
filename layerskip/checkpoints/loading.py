"""Load Llama-family and Gemma 3 checkpoints in Hugging Face layout: local directories, GGUF files, known names or hub ids.

A checkpoint is a directory with ``config.json``, one or several ``*.safetensors`` files (with
``model.safetensors.index.json`` when sharded) and tokenizer files. A ``.gguf`` file is converted
once into such a directory (``layerskip.checkpoints.gguf``); a name from ``layerskip.checkpoints.registry``
resolves to the directory ``layerskip fetch NAME`` made. Hub ids are resolved through
``huggingface_hub`` and its cache. Only safetensors are read; pickle weights are refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerskip.kernels.compiled import compile_layers, require_compiler
from layerskip.model.config import ModelConfig
from layerskip.errors import LayerskipError, read_json_object
from layerskip.kernels.linear import check_quantize, prepare_for_inference
from layerskip.kernels.policy import auto_dtype
from layerskip.checkpoints.gguf import gguf_checkpoint
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.model.gemma3 import causal_lm
from layerskip.checkpoints.registry import REGISTRY, fetched_dir
from layerskip.validation import inside

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
DEFAULT_MODEL = "layerskip-pycode"
RECOMMENDED_FILE = "layerskip.json"


def default_model_path() -> Path:
    """The model shipped inside the package (trained with ``layerskip train``; see its MODEL_CARD.md)."""
    return Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL


def recommended_settings(path: Path) -> dict[str, Any]:
    """The checkpoint's recommended draft configuration (``DraftConfig`` fields), if it has one."""
    file = path / RECOMMENDED_FILE
    if not file.exists():
        return {}
    raw = read_json_object(file, f"corrupt {file}", f"missing {file}").get("recommended", {})
    if not isinstance(raw, dict):
        raise LayerskipError(f"corrupt {file}: 'recommended' must be an object")
    if isinstance(raw.get("draft_adapter"), str):  # stored relative to the checkpoint
        raw = {**raw, "draft_adapter": str(path / raw["draft_adapter"])}
    return raw


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise LayerskipError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LayerskipError(f"`device` {name} requested but no CUDA device is available")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise LayerskipError(f"`device` {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, config: ModelConfig | None = None) -> torch.dtype:
    """The dtype ``name`` names; ``auto``: what ``layerskip.kernels.policy.auto_dtype`` picks for this
    model (``config``) on ``device``."""
    if name == "auto":
        return auto_dtype(device, config)
    if name not in DTYPES:
        raise LayerskipError(f"unknown dtype {name!r} (use auto, float32, bfloat16 or float16)")
    return DTYPES[name]


def resolve_model_path(model: str) -> Path:
    """A local checkpoint directory for ``model``: a directory, a ``.gguf`` file (converted once),
    a fetched registry name, or a hub id fetched into the HF cache."""
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() == ".gguf":
            return gguf_checkpoint(path)
        if not path.is_dir():
            raise LayerskipError(f"`model` {model}: not a directory or a .gguf file")
        return path.resolve()
    if model in REGISTRY:
        if not fetched_dir(model).is_dir():
            raise LayerskipError(f"{model} is not on this machine yet; run: layerskip fetch {model}")
        return fetched_dir(model)
    if not HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise LayerskipError(f"model directory not found: {model}")
    return _download(model)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise LayerskipError(
            f"{repo_id} is gated: request access on its hub page, then log in with `hf auth login` "
            "(or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise LayerskipError(
            f"{repo_id}: no such model directory, and no such hub repository (or it is private: log in with `hf auth login`)"
        ) from None
    except Exception as exc:  # offline, DNS, proxy, HF_HUB_OFFLINE=1 ...
        raise LayerskipError(
            f"cannot download {repo_id} from the hub ({type(exc).__name__}); it is not in the local cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it where the hub is reachable "
            "and pass its local directory to `model`"
        ) from None


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json_object(index, f"corrupt {index}", f"missing {index}").get("weight_map")
        if not isinstance(weight_map, dict):
            raise LayerskipError(f"corrupt {index}: weight_map must be an object")
        files = sorted({inside(path, name, str(index)) for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise LayerskipError(f"{index} names missing shard(s): {', '.join(missing)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if list(path.glob("*.bin")) or list(path.glob("*.pt")):
            raise LayerskipError(
                f"{path} holds only pickle weights (*.bin/*.pt), which are not loaded for safety; "
                "convert them to safetensors"
            )
        raise LayerskipError(f"no *.safetensors weights in {path}")
    return files


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise LayerskipError(f"corrupt safetensors file {file}: {exc}") from None
    return state


#: where a multimodal checkpoint (Gemma 3's ``gemma3``) keeps its text decoder: transformers 4.x, 5.x
TEXT_DECODER_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                         ("language_model.lm_head.", "lm_head."))


def text_decoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with a multimodal checkpoint's text decoder under the text-only names (``model.*``,
    ``lm_head.*``) and its other towers left out; a text-only checkpoint's ``state`` as it is."""
    if not any(key.startswith(old) for key in state for old, _ in TEXT_DECODER_PREFIXES):
        return state
    renamed = {}
    for key, tensor in state.items():
        for old, new in TEXT_DECODER_PREFIXES:
            if key.startswith(old):
                renamed[new + key[len(old):]] = tensor
    if "lm_head.weight" in state:
        renamed.setdefault("lm_head.weight", state["lm_head.weight"])
    return renamed


def load_model(path: Path, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Build the model from ``path/config.json`` and fill it from its safetensors files."""
    config = ModelConfig.from_file(path / "config.json")
    state = text_decoder_weights(read_state_dict(weight_files(path)))
    with torch.device("meta"):
        model = causal_lm(config).to(dtype)
    model.to_empty(device=device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        state.pop("lm_head.weight", None)
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(state))
    if missing:
        raise LayerskipError(f"checkpoint {path} lacks weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name, param in expected.items():
            tensor = state[name]
            if tensor.shape != param.shape:
                raise LayerskipError(
                    f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, config expects {tuple(param.shape)}"
                )
            param.copy_(tensor)
    model.eval()
    model.requires_grad_(False)
    model.source_path = path
    return model


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many types for missing/corrupt files
        raise LayerskipError(f"cannot load the tokenizer from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


@dataclass
class LoadedModel:
    path: Path
    model: LlamaForCausalLM
    tokenizer: object
    recommended: dict[str, Any]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The tokens that end a generation: the checkpoint's end-of-sequence ids and the tokenizer's."""
        ids = list(self.model.config.eos_token_ids)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None and eos not in ids:
            ids.append(int(eos))
        return tuple(ids)


def load(model: str | None = None, device: str = "auto", dtype: str = "auto", quantize: str = "none",
         prepare: bool = True, compile: bool = False) -> LoadedModel:
    """Model, tokenizer and recommended settings of ``model`` (default: the shipped model). The model
    is prepared for inference (fused projections, ``quantize`` "none" | "int8"; ``compile``: decoding
    through the compiled layer loop, ``layerskip.kernels.compiled``) unless ``prepare`` is False: then its
    modules are the checkpoint's own (to copy layers from, or to train)."""
    check_quantize(quantize)
    if compile and quantize != "none":
        raise LayerskipError("`compile` applies to `quantize` none (int8 layers run eagerly)")
    dev = resolve_device(device)
    if compile:
        require_compiler(dev)  # before any model is resolved
    path = resolve_model_path(model) if model else default_model_path()
    if not model and not (path / "config.json").exists():
        raise LayerskipError(f"the shipped model is missing from {path}; pass `model`")
    config = ModelConfig.from_file(path / "config.json")
    if compile:
        require_compiler(dev, config)  # before any weight is read
    net = load_model(path, dev, resolve_dtype(dtype, dev, config))
    if prepare:
        prepare_for_inference(net, quantize, for_compile=compile)
        if compile:
            compile_layers(net)
    return LoadedModel(path, net, load_tokenizer(path), recommended_settings(path))
