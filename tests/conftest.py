from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import CHAT_TEMPLATE, make_checkpoint  # noqa: E402

from layerskip.kernels.linear import prepare_for_inference  # noqa: E402
from layerskip.checkpoints.loading import load_model  # noqa: E402
from layerskip.kernels.native import kernels_root  # noqa: E402

torch.set_num_threads(2)

# one build of the native kernels for the whole run, in the user's cache, whatever LAYERSKIP_HOME a test sets
# (the tests of the build itself give it a root of their own)
os.environ.setdefault("LAYERSKIP_KERNELS", str(kernels_root()))


@pytest.fixture(autouse=True)
def layerskip_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fetched models and converted GGUF files go to a per-test directory, never ~/.cache."""
    home = tmp_path / "layerskip_home"
    monkeypatch.setenv("LAYERSKIP_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer GQA Llama with a BPE tokenizer."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny"), init_std=0.1)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path):
    return prepare_for_inference(load_model(tiny_dir, torch.device("cpu"), torch.float32))


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Llama, its tokenizer with a chat template (``helpers.CHAT_TEMPLATE``)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_chat"), init_std=0.1, chat_template=CHAT_TEMPLATE)
