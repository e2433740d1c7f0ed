"""The files of ``layerskip tune``: the tuned config reads back as ``--draft_config``; the
recommendation keeps the checkpoint file's other keys; a corrupt file is one error."""

from __future__ import annotations

import json

import pytest

from layerskip.drafters.config import DraftConfig, load_draft_config
from layerskip.errors import LayerskipError
from layerskip.checkpoints.loading import RECOMMENDED_FILE
from layerskip.evaluation.tuning_output import save_recommendation, write_tuned


def test_tuned_file_is_a_draft_config(tmp_path):
    best = DraftConfig(exit_layer=3, num_speculations=5, criteria="max_probability", threshold=0.7)
    path = tmp_path / "sub" / "tuned.json"
    write_tuned(path, best, {"tokens_per_second": 12.0}, [{"trial": 0}])
    assert load_draft_config(str(path)) == best
    assert json.loads(path.read_text())["measured"]["tokens_per_second"] == 12.0


def test_recommendation_keeps_other_keys_and_refuses_a_corrupt_file(tmp_path):
    (tmp_path / RECOMMENDED_FILE).write_text(json.dumps({"note": "kept", "recommended": {"exit_layer": 1}}))
    path = save_recommendation(tmp_path, DraftConfig(exit_layer=2, num_speculations=4))
    data = json.loads(path.read_text())
    assert data["note"] == "kept" and data["recommended"]["exit_layer"] == 2 and data["recommended"]["num_speculations"] == 4
    path.write_text("{not json")
    with pytest.raises(LayerskipError, match="corrupt"):
        save_recommendation(tmp_path, DraftConfig(exit_layer=2, num_speculations=4))
