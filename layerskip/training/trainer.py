"""``layerskip train``: the LayerSkip recipe (layer dropout + early-exit loss) as one training loop.

Continual pretraining / finetuning from a Hugging Face checkpoint, or from scratch with a new
config and a byte-level BPE tokenizer trained on the corpus. AdamW, warm-up + cosine, gradient
clipping and accumulation, bf16 autocast, periodic evaluation of the loss at every exit layer and
of draft acceptance, checkpoints that resume exactly, DistributedDataParallel under torchrun.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from layerskip.model.config import ModelConfig
from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.training.distributed import World, init_world
from layerskip.files.jsonl import keep_records
from layerskip.errors import LayerskipError, read_json_object
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import DTYPES, load_model, load_tokenizer, resolve_model_path
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.decoding.sampling import SamplingConfig
from layerskip.files.storage import atomic_write
from layerskip.training.tokenizer_training import train_bpe_tokenizer
from layerskip.training import data as corpus
from layerskip.training.checkpoint import (
    Checkpoint,
    changed_settings,
    load_training_state,
    recover,
    save_pretrained,
    save_training_state,
)
from layerskip.training.early_exit_loss import enabled_layers, layer_scales, normalized_weights
from layerskip.training.layer_dropout import dropout_rates, sample_keep_mask
from layerskip.training.objective import EarlyExitObjective, mean_exit_statistics
from layerskip.training.schedule import learning_rate
from layerskip.validation import as_float, as_int, writable_dir

COUNTS_FROM_ZERO = ("warmup", "eval_every", "eval_batches", "eval_prompts", "save_every")
CONFIG_FILE = "train_config.json"
CHECKPOINT_DIR = "checkpoint"
FINAL_DIR = "final"


#: settings that name files: a resumed run may spell them differently
PATH_SETTINGS = frozenset({"corpus", "init_model"})


@dataclass
class TrainConfig:
    corpus: str = corpus.STDLIB
    text_field: str = "text"
    output_dir: str = "./runs/train"
    init_model: str | None = None  # None: from scratch with the shape below
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 12
    intermediate_size: int = 704
    num_heads: int = 4
    num_kv_heads: int = 2
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    p_max: float = 0.1
    dropout_shape: str = "exponential"
    dropout_time: str = "constant"
    e_scale: float = 1.0
    scale_shape: str = "sum_l"
    curriculum: str = "rotational"
    rotation: int = 8
    distill: float = 0.0
    eval_every: int = 250
    eval_batches: int = 8
    eval_prompts: int = 4
    save_every: int = 250
    seed: int = 42
    bf16: bool = True
    save_dtype: str = "bfloat16"

    def validate(self) -> None:
        """One error line for the first bad value, before anything is read or allocated."""
        for f in fields(self):
            value, name = getattr(self, f.name), f"--{f.name}"
            if str(f.type) == "int":
                as_int(value, name, None if f.name == "seed" else (0 if f.name in COUNTS_FROM_ZERO else 1),
                       1 << 22 if f.name == "vocab_size" else (1024 if f.name == "num_layers" else None))
            elif str(f.type) == "float":
                as_float(value, name, 0.0)
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise LayerskipError("`lr` must be > 0 and `min_lr_ratio` in [0, 1]")
        if self.init_model is None and self.seq_len > self.max_position_embeddings:
            raise LayerskipError(f"`seq_len` {self.seq_len} exceeds `max_position_embeddings` {self.max_position_embeddings}")
        writable_dir(self.output_dir, "`output_dir`")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.seq_len < 2:
            raise LayerskipError("steps, batch_size, grad_accum must be >= 1 and seq_len >= 2")
        if not 0 <= self.p_max <= 1:
            raise LayerskipError(f"`p_max` must be in [0, 1], got {self.p_max}")
        if not 0 <= self.distill <= 1:
            raise LayerskipError(f"`distill` must be in [0, 1], got {self.distill}")
        if self.e_scale < 0:
            raise LayerskipError("`e_scale` must be >= 0")
        if self.init_model is None and self.hidden_size % self.num_heads:
            raise LayerskipError("`hidden_size` must be divisible by `num_heads`")
        if self.init_model is None and self.num_heads % self.num_kv_heads:
            raise LayerskipError("`num_heads` must be divisible by `num_kv_heads`")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def new_model_config(cfg: TrainConfig, tokenizer) -> ModelConfig:
    return ModelConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=(tokenizer.eos_token_id,),
    )


def init_weights(model: LlamaForCausalLM, seed: int, std: float = 0.02) -> None:
    """Normal(0, std) for matrices (output projections scaled by 1/sqrt(2L)), ones for norms."""
    g = torch.Generator().manual_seed(seed)
    scaled = std / math.sqrt(2 * model.num_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                s = scaled if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                param.copy_(torch.randn(param.shape, generator=g) * s)


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: World | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.ctx = ctx or init_world()
        self.out = Path(os.path.normpath(cfg.output_dir))
        torch.manual_seed(cfg.seed)
        self._prepare()

    # ---- set-up -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        checkpoint: Checkpoint | None = None
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoint = recover(self.out / CHECKPOINT_DIR)
            if checkpoint is not None:
                self._check_resume_config()
            atomic_write(self.out / CONFIG_FILE, json.dumps(asdict(cfg), indent=2) + "\n")
        documents = corpus.corpus_documents(cfg.corpus, cfg.text_field)
        train_docs, val_docs = corpus.split_documents(documents)
        tokenizer_dir = self.out / "tokenizer"
        if cfg.init_model:
            path = resolve_model_path(cfg.init_model)
            self.tokenizer = load_tokenizer(path)
            self.model = load_model(path, torch.device("cpu"), torch.float32)
            self.model.requires_grad_(True)
        else:
            if ctx.is_main and not (tokenizer_dir / "tokenizer.json").exists():
                tokenizer = train_bpe_tokenizer((d.text for d in train_docs), cfg.vocab_size)
                tokenizer.save_pretrained(str(tokenizer_dir))
            ctx.barrier()
            self.tokenizer = load_tokenizer(tokenizer_dir)
            self.model = LlamaForCausalLM(new_model_config(cfg, self.tokenizer))
            init_weights(self.model, cfg.seed)
        self.model.to(ctx.device).train()
        eos = corpus.document_separator(self.tokenizer)
        self.train_stream = corpus.tokenize_stream(train_docs, self.tokenizer, eos)
        self.val_stream = corpus.tokenize_stream(val_docs, self.tokenizer, eos)
        self.val_batches = corpus.sequential_windows(self.val_stream, cfg.batch_size, cfg.seq_len, cfg.eval_batches)
        self.val_prompts = [
            self.tokenizer(d.text[:400])["input_ids"][:48] for d in val_docs[: cfg.eval_prompts] if d.text.strip()
        ]
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
        )
        objective = EarlyExitObjective(self.model, cfg.distill)
        self.objective: torch.nn.Module = objective
        if ctx.size > 1:
            self.objective = DistributedDataParallel(objective, find_unused_parameters=True)
        self.step = 0
        ctx.barrier()  # rank 0 has recovered the checkpoint directory
        if not ctx.is_main:
            checkpoint = recover(self.out / CHECKPOINT_DIR)  # only reads: rank 0 left nothing to repair
        if checkpoint is not None:
            self.step = load_training_state(checkpoint, self.model, self.optimizer)["step"]
        if ctx.is_main:
            self._truncate_logs(self.step)
        self.tokens_seen = self.step * cfg.batch_size * cfg.seq_len * cfg.grad_accum * ctx.size

    def _truncate_logs(self, step: int) -> None:
        """Drop log records past the checkpoint's step (written by a run stopped after its last
        checkpoint, or before its first) and a last line cut by a crash, so a resumed run's logs
        hold every step once."""
        for name in ("train_log.jsonl", "eval_log.jsonl"):
            keep_records(self.out / name, lambda r: isinstance(r, dict) and r.get("step", 0) <= step, "log record")

    def _check_resume_config(self) -> None:
        existing = self.out / CONFIG_FILE
        if existing.exists():
            old = read_json_object(existing, f"corrupt {existing}", f"missing {existing}")
            defaults = asdict(TrainConfig())  # keys added since the checkpoint was written
            free = {"steps", "eval_every", "save_every", "output_dir"}  # output_dir: the same directory, however spelled
            changed = changed_settings(old, asdict(self.cfg), free, PATH_SETTINGS, defaults)
            if changed:
                raise LayerskipError(
                    f"{self.out} holds a checkpoint of a run with different settings ({', '.join(changed)}); "
                    "use another `output_dir`"
                )

    # ---- one step -----------------------------------------------------------------------------
    def loss_weights(self, step: int) -> list[float]:
        L, cfg = self.model.num_layers, self.cfg
        enabled = enabled_layers(L, step, cfg.steps, cfg.curriculum, cfg.rotation)
        return normalized_weights(layer_scales(L, cfg.e_scale, cfg.scale_shape), enabled)

    def train_step(self) -> dict[str, Any]:
        cfg, ctx, step = self.cfg, self.ctx, self.step
        lr = learning_rate(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        weights = self.loss_weights(step)
        rates = dropout_rates(self.model.num_layers, cfg.p_max, step, cfg.steps, cfg.dropout_shape, cfg.dropout_time)
        total = 0.0
        per_layer = torch.zeros(self.model.num_layers)
        autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
        for micro in range(cfg.grad_accum):
            gen = corpus.batch_generator(cfg.seed, step, micro, ctx.rank)
            inputs, targets = corpus.random_windows(self.train_stream, cfg.batch_size, cfg.seq_len, gen)
            keep = sample_keep_mask(rates, cfg.batch_size, gen) if cfg.p_max > 0 else None
            inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
            sync = nullcontext()
            if isinstance(self.objective, DistributedDataParallel) and micro < cfg.grad_accum - 1:
                sync = self.objective.no_sync()
            with sync:
                with autocast:
                    loss, layer_ce = self.objective(inputs, targets, None if keep is None else keep.to(ctx.device), weights)
                (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
            per_layer += torch.nan_to_num(layer_ce) / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += cfg.batch_size * cfg.seq_len * cfg.grad_accum * ctx.size
        return {"step": self.step, "loss": total, "lr": lr, "grad_norm": float(grad_norm), "tokens": self.tokens_seen,
                "final_layer_ce": float(per_layer[-1])}

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Validation loss and top-1 agreement with the last layer at every exit layer, and greedy
        draft acceptance per exit layer (k=4) on a few validation prompts."""
        model = self.model
        model.eval()
        sums, agreement = mean_exit_statistics(model, self.val_batches)
        acceptance = {}
        gcfg = GenerationConfig(max_steps=32, sampling=SamplingConfig(sample=False))
        for exit_layer in range(1, model.num_layers):
            drafted = accepted = 0
            for prompt in self.val_prompts:
                stats = generate(model, prompt, gcfg, Decoding(EarlyExitDrafter(exit_layer, 4))).stats
                drafted += stats.drafted_tokens
                accepted += stats.accepted_tokens
            acceptance[exit_layer] = accepted / drafted if drafted else None
        model.train()
        return {"step": self.step, "tokens": self.tokens_seen, "val_loss_per_exit_layer": {l + 1: s for l, s in enumerate(sums)},
                "agreement_per_exit_layer": {l + 1: a for l, a in enumerate(agreement)},
                "acceptance_per_exit_layer": acceptance}

    # ---- the loop -----------------------------------------------------------------------------
    def _log(self, name: str, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with (self.out / name).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")  # a crash may cut it: _truncate_logs drops that line

    def save_checkpoint(self) -> None:
        if self.ctx.is_main:
            save_training_state(self.out / CHECKPOINT_DIR, self.model, self.optimizer, self.step, {"tokens_seen": self.tokens_seen})
        self.ctx.barrier()

    def save_final(self) -> Path:
        final = self.out / FINAL_DIR
        if self.ctx.is_main:
            dtype = DTYPES[self.cfg.save_dtype]
            info = {"training": {"config": asdict(self.cfg), "steps": self.step, "tokens_seen": self.tokens_seen}}
            save_pretrained(self.model, final, self.tokenizer, dtype, extra=info)
        self.ctx.barrier()
        return final

    def run(self, progress: bool = True) -> Path:
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (progress and self.ctx.is_main), desc="train", dynamic_ncols=True)
        start = time.time()
        while self.step < cfg.steps:
            record = self.train_step()
            record["elapsed_s"] = time.time() - start
            self._log("train_log.jsonl", record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save_checkpoint()
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps) and self.ctx.is_main:
                result = self.evaluate()
                self._log("eval_log.jsonl", result)
                losses = result["val_loss_per_exit_layer"]
                agree = result["agreement_per_exit_layer"]
                bar.write(f"step {self.step}: val loss " + " ".join(f"L{l}={v:.2f}" for l, v in losses.items()))
                bar.write(f"step {self.step}: agreement " + " ".join(f"L{l}={v:.2f}" for l, v in agree.items()))
        bar.close()
        self.save_checkpoint()
        return self.save_final()
