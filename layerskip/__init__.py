"""layerskip: early-exit inference and self-speculative decoding (LayerSkip, Elhoushi et al., ACL 2024).

    from layerskip import LLM, SamplingParams

The public API (``layerskip.api``) is imported on first use, so ``import layerskip`` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("LLM", "SamplingParams", "RequestOutput", "CompletionOutput"):
        from layerskip import api

        return getattr(api, name)
    raise AttributeError(f"module 'layerskip' has no attribute {name!r}")
