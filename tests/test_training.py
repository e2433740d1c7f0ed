"""``layerskip train``: a few steps lower the loss, resume is exact, torchrun with 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import write_corpus

from layerskip.training.trainer import TrainConfig, Trainer

TINY = dict(vocab_size=300, hidden_size=32, num_layers=3, intermediate_size=64, num_heads=4, num_kv_heads=2,
            seq_len=32, batch_size=4, warmup=2, eval_every=0, save_every=0, eval_prompts=1, eval_batches=2,
            p_max=0.2, e_scale=1.0, curriculum="rotational", rotation=2, lr=1e-2)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), 4)


def config(corpus_dir: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(corpus=str(corpus_dir), output_dir=str(out), **{**TINY, **kw})


def test_few_steps_lower_the_loss_and_save_a_transformers_checkpoint(corpus_dir, tmp_path):
    trainer = Trainer(config(corpus_dir, tmp_path / "run", steps=30, eval_every=30))
    before = trainer.evaluate()["val_loss_per_exit_layer"]
    final = trainer.run(progress=False)
    after = [json.loads(line) for line in (tmp_path / "run" / "eval_log.jsonl").read_text().splitlines()][-1]
    assert after["val_loss_per_exit_layer"]["3"] < before[3] - 0.5
    assert set(after["acceptance_per_exit_layer"]) == {"1", "2"}
    assert after["agreement_per_exit_layer"]["3"] == 1.0
    with torch.no_grad():  # exit 1's agreement, by hand: its argmax against the last layer's on the validation windows
        model = trainer.model.eval()
        shares = [(model.unembed(model.run_layers(model.embed(x), 0, 1)).argmax(-1) == model(x).argmax(-1)).float().mean()
                  for x, _ in trainer.val_batches]
    assert after["agreement_per_exit_layer"]["1"] == pytest.approx(float(sum(shares) / len(shares)), abs=1e-6)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 30 and log[-1]["loss"] < log[0]["loss"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerskip.checkpoints.loading import load_model

    reference = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32).eval()
    ours = load_model(final, torch.device("cpu"), torch.float32)
    ids = AutoTokenizer.from_pretrained(str(final))("def add(a, b):", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_resume_gives_the_same_state_as_an_uninterrupted_run(corpus_dir, tmp_path):
    full = Trainer(config(corpus_dir, tmp_path / "full", steps=6))
    full.run(progress=False)

    interrupted = Trainer(config(corpus_dir, tmp_path / "resumed", steps=6))
    for _ in range(3):
        interrupted.train_step()
    interrupted.save_checkpoint()
    del interrupted
    log = tmp_path / "resumed" / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))  # step 4 came after the checkpoint
    resumed = Trainer(config(corpus_dir, tmp_path / "resumed", steps=6))
    assert resumed.step == 3
    resumed.run(progress=False)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    for a, b in zip(full.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_resume_refuses_changed_settings(corpus_dir, tmp_path):
    from layerskip.errors import LayerskipError

    trainer = Trainer(config(corpus_dir, tmp_path / "run", steps=2))
    trainer.train_step()
    trainer.save_checkpoint()
    with pytest.raises(LayerskipError, match="different settings"):
        Trainer(config(corpus_dir, tmp_path / "run", steps=2, lr=5e-3))


def test_distill_must_be_a_fraction(corpus_dir, tmp_path):
    from layerskip.errors import LayerskipError

    with pytest.raises(LayerskipError, match="`distill`"):
        Trainer(config(corpus_dir, tmp_path / "run", steps=2, distill=1.5))


def test_continual_pretraining_from_a_checkpoint(corpus_dir, tiny_dir, tmp_path):
    cfg = replace(config(corpus_dir, tmp_path / "cont", steps=3, distill=0.5), init_model=str(tiny_dir))
    trainer = Trainer(cfg)
    assert trainer.model.num_layers == 4
    final = trainer.run(progress=False)
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()


def test_torchrun_two_cpu_processes(corpus_dir, tmp_path):
    out = tmp_path / "ddp"
    args = [f"--{k}={v}" for k, v in TINY.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "layerskip", "train", f"--corpus={corpus_dir}", f"--output_dir={out}", "--steps=4", "--no_progress", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4  # only rank 0 logs
    assert log[-1]["tokens"] == 4 * 2 * TINY["batch_size"] * TINY["seq_len"]
    assert (out / "final" / "model.safetensors").exists()
