"""Crash-safe checkpoints: a kill at every step of the save protocol leaves a resumable state."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import write_corpus

from layerskip.errors import LayerskipError
from layerskip.training import checkpoint as ckpt
from layerskip.training.checkpoint import recover, save_checkpoint
from layerskip.training.trainer import TrainConfig, Trainer

TINY = dict(vocab_size=300, hidden_size=32, num_layers=2, intermediate_size=64, num_heads=4, num_kv_heads=2,
            seq_len=32, batch_size=2, warmup=1, eval_every=0, save_every=0, eval_prompts=1, eval_batches=1)


class Killed(Exception):
    """Stands for the process dying at this point."""


class Killer:
    """Wraps every operation of the protocol that changes the disk; dies before the ``at``-th."""

    NAMES = ("save_file", "fsync_path", "_remove")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int | None) -> None:
        self.calls, self.at = 0, at
        for name in self.NAMES:
            monkeypatch.setattr(ckpt, name, self.wrap(getattr(ckpt, name)))
        monkeypatch.setattr(ckpt.os, "replace", self.wrap(os.replace))
        monkeypatch.setattr(ckpt.torch, "save", self.wrap(torch.save))

    def wrap(self, function):
        def wrapped(*args, **kwargs):
            if self.calls == self.at:
                raise Killed
            self.calls += 1
            return function(*args, **kwargs)

        return wrapped


def tensors(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4, 4), value), "b": torch.full((4,), value)}


def save(directory: Path, step: int) -> None:
    save_checkpoint(directory, tensors(float(step)), {"step": step}, {"optimizer": {"count": torch.tensor(step)}})


def test_a_kill_at_every_step_of_a_save_leaves_a_complete_checkpoint(tmp_path, monkeypatch):
    counting = tmp_path / "count" / "checkpoint"
    save(counting, 1)
    with monkeypatch.context() as patch:
        killer = Killer(patch, None)
        save(counting, 2)
    steps = killer.calls
    assert steps >= 8
    recovered_steps = set()
    for at in range(steps):
        directory = tmp_path / f"kill{at}" / "checkpoint"
        save(directory, 1)
        with monkeypatch.context() as patch:
            Killer(patch, at)
            with pytest.raises(Killed):
                save(directory, 2)
        found = recover(directory)
        assert found is not None, f"killed before operation {at}: no checkpoint"
        assert found.path == directory
        assert torch.equal(found.tensors()["w"], tensors(float(found.step))["w"]), at
        assert int(found.state()["optimizer"]["count"]) == found.step
        assert sorted(p.name for p in directory.parent.iterdir()) == ["checkpoint"], at
        recovered_steps.add(found.step)
        save(directory, 3)  # later saves work after any crash
        assert recover(directory).step == 3
    assert recovered_steps == {1, 2}


def test_a_file_cut_short_is_not_taken_for_a_checkpoint(tmp_path):
    directory = tmp_path / "checkpoint"
    save(directory, 1)
    shutil.copytree(directory, tmp_path / "step1")
    save(directory, 2)
    os.rename(directory, tmp_path / "checkpoint.tmp")
    os.rename(tmp_path / "step1", tmp_path / "checkpoint.old")
    weights = tmp_path / "checkpoint.tmp" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])  # its size no longer matches the marker
    assert recover(directory).step == 1


def test_a_damaged_checkpoint_alone_is_an_error(tmp_path):
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"x")
    with pytest.raises(LayerskipError, match="no complete checkpoint"):
        recover(directory)


def test_no_checkpoint_at_all_is_none(tmp_path):
    assert recover(tmp_path / "checkpoint") is None


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), 2)


def trainer(corpus_dir: Path, out: str, steps: int = 4) -> Trainer:
    return Trainer(TrainConfig(corpus=str(corpus_dir), output_dir=out, steps=steps, **TINY))


def run_steps(t: Trainer, n: int) -> None:
    for _ in range(n):
        t._log("train_log.jsonl", t.train_step())
    t.save_checkpoint()


def test_resume_from_a_leftover_old_checkpoint_cut_log_and_respelled_directory(corpus_dir, tmp_path):
    out = tmp_path / "run"
    run_steps(trainer(corpus_dir, str(out)), 2)
    os.rename(out / "checkpoint", out / "checkpoint.old")  # killed between moving it away and the rename
    with (out / "train_log.jsonl").open("a") as log:
        log.write('{"step": 3, "lo')  # killed mid-write
    resumed = trainer(corpus_dir, f"{tmp_path}/./run/")
    assert resumed.step == 2
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    run_steps(resumed, 1)
    resumed.save_checkpoint()  # a second save over the first: the leftover never gets in the way
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert recover(out / "checkpoint").step == 3


def test_a_respelled_corpus_path_resumes_and_another_corpus_is_refused(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(corpus_dir.parent)
    out = str(tmp_path / "run")
    run_steps(Trainer(TrainConfig(corpus=corpus_dir.name, output_dir=out, steps=4, **TINY)), 1)
    resumed = Trainer(TrainConfig(corpus=f"./{corpus_dir.name}/", output_dir=out, steps=4, **TINY))
    assert resumed.step == 1
    (tmp_path / "other").mkdir()
    other = write_corpus(tmp_path / "other", 3)
    with pytest.raises(LayerskipError, match=r"different settings \(corpus\)"):
        Trainer(TrainConfig(corpus=str(other), output_dir=out, steps=4, **TINY))


def test_changed_settings_compares_existing_paths_as_locations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corp").mkdir()
    stored = {"corpus": "corp", "lr": 1e-3, "steps": 10}
    assert ckpt.changed_settings(stored, {"corpus": str(tmp_path / "corp") + "/", "lr": 1e-3, "steps": 20},
                                 {"steps"}, {"corpus"}) == []
    assert ckpt.changed_settings(stored, {"corpus": "stdlib", "lr": 2e-3, "steps": 10}, {"steps"}, {"corpus"}) == ["corpus", "lr"]
    assert ckpt.changed_settings({}, {"new_key": 3}, set(), set(), {"new_key": 3}) == []
