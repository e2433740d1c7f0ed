from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_checkpoint  # noqa: E402

from layerskip.fast_linear import prepare_for_inference  # noqa: E402
from layerskip.loading import load_model  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer GQA Llama with a BPE tokenizer."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny"), init_std=0.1)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path):
    return prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.float32))
