"""layerskip: early-exit inference and self-speculative decoding (LayerSkip, Elhoushi et al., ACL 2024)."""

__version__ = "0.1.0"
