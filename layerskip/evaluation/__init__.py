"""The evaluation harness: datasets, metrics, strategies side by side, sweeps and correctness."""
