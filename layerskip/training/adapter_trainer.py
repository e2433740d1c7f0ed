"""``layerskip train-adapter``: train a draft adapter on a frozen checkpoint (Kangaroo, Liu et al. 2024).

1. Corpus text (files, ``stdlib``, or the model's own greedy text from ``layerskip self-generate``)
   is tokenized; its token frequencies give the draft vocabulary ranking (FR-Spec).
2. ``h_E`` and the full model's top-k distribution are extracted once per window
   (``adapter_features``), resumable and sharded across torchrun ranks.
3. Only the adapter trains (AdamW, warm-up + cosine): adapter(``h_E``) -> the model's frozen final
   norm and head over the draft vocabulary -> ``adapter_objective.soft_target_loss``. Gradients are
   averaged across ranks; batches are a pure function of (seed, step, rank), so a resumed run sees
   the batches the uninterrupted one would have.
4. Every ``eval_every`` steps: top-1 agreement on held-out windows, draft acceptance of greedy
   self-speculative decoding on held-out prompts, a crash-safe checkpoint, and the current adapter.

Outputs in ``output_dir``: ``train_adapter_config.json``, ``features/``, ``checkpoint/`` (resumption),
``train_log.jsonl`` and ``adapter/`` (the latest adapter + draft vocabulary + training record; usable
with ``--draft_adapter`` while training goes on).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from layerskip.model.adapter import ARCHITECTURES, DraftAdapter, init_adapter, load_adapter, read_adapter_config, save_adapter
from layerskip.drafters.adapter import AdapterDrafter
from layerskip.training.distributed import World, init_world
from layerskip.files.jsonl import keep_records
from layerskip.drafters.draft_head import draft_subset, frequency_ranking, save_ranking
from layerskip.errors import LayerskipError
from layerskip.kernels.linear import prepare_for_inference
from layerskip.model.fingerprint import base_fingerprint
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import LoadedModel, load
from layerskip.decoding.sampling import SamplingConfig
from layerskip.training import data as corpus
from layerskip.training.adapter_features import FeatureSpec, check_or_write_meta, extract_features, load_features
from layerskip.training.checkpoint import changed_settings, recover, save_checkpoint
from layerskip.training.adapter_objective import soft_target_loss, vocabulary_index
from layerskip.training.schedule import learning_rate
from layerskip.model.config import check_exit_layer

CONFIG_FILE = "train_adapter_config.json"
LOG_FILE = "train_log.jsonl"
INIT_CHOICES = ("exit", "last", "random")
#: fields that may change when a run is resumed (they do not change what was already computed)
RESUMABLE_CHANGES = {"steps", "max_tokens", "eval_every", "eval_prompts", "eval_tokens", "device"}


@dataclass
class AdapterTrainConfig:
    model: str | None = None
    exit_layer: int = 2
    corpus: str = corpus.STDLIB
    text_field: str = "text"
    output_dir: str = "./runs/adapter"
    architecture: str = "attention"
    init: str = "last"
    init_from: str | None = None
    max_tokens: int = 262_144
    seq_len: int = 256
    top_k: int = 32
    draft_vocab: int = 8192
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_prompts: int = 4
    eval_tokens: int = 64
    num_speculations: int = 4
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        positive = ("exit_layer", "max_tokens", "seq_len", "top_k", "steps", "batch_size", "eval_every", "eval_tokens", "num_speculations")
        for name in positive:
            if getattr(self, name) < 1:
                raise LayerskipError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens < self.seq_len:
            raise LayerskipError(f"`max_tokens` {self.max_tokens} is less than one window (`seq_len` {self.seq_len})")
        if self.draft_vocab < 0 or self.eval_prompts < 0 or self.warmup < 0:
            raise LayerskipError("`draft_vocab`, `eval_prompts` and `warmup` must be >= 0")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.weight_decay >= 0 and self.grad_clip > 0):
            raise LayerskipError("`lr` and `grad_clip` must be > 0, `min_lr_ratio` in [0, 1], `weight_decay` >= 0")
        if self.architecture not in ARCHITECTURES:
            raise LayerskipError(f"`architecture` must be one of {', '.join(ARCHITECTURES)}")
        if self.init not in INIT_CHOICES:
            raise LayerskipError(f"`init` must be one of {', '.join(INIT_CHOICES)}")
        if self.init_from is not None:
            start = read_adapter_config(self.init_from)
            if (start.exit_layer, start.architecture) != (self.exit_layer, self.architecture):
                raise LayerskipError(f"`init_from` {self.init_from} is a {start.architecture} adapter at exit "
                                     f"{start.exit_layer}, not a {self.architecture} adapter at `exit_layer` {self.exit_layer}")


def _check_resumable(path: Path, config: AdapterTrainConfig) -> None:
    """Refuse an output directory made by a run with other settings (beyond ``RESUMABLE_CHANGES``)."""
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise LayerskipError(f"{path} is not a train-adapter config; use another `output_dir`") from None
    if not isinstance(stored, dict):
        raise LayerskipError(f"{path} is not a train-adapter config; use another `output_dir`")
    changed = changed_settings(stored, asdict(config), RESUMABLE_CHANGES | {"output_dir"}, {"model", "corpus"})
    if changed:
        raise LayerskipError(f"{path.parent} holds a run with other settings ({', '.join(changed)}); "
                             "use another `output_dir` or the same settings to resume")


def _windows(stream: torch.Tensor, count: int, seq_len: int, seed: int) -> torch.Tensor:
    """``count`` of the stream's non-overlapping windows ``[count, seq_len]``, in a seeded random order
    that does not depend on ``count``: a larger budget keeps every window (and feature shard) of a
    smaller one."""
    total = stream.numel() // seq_len
    if total < 1:
        raise LayerskipError(f"the corpus has {stream.numel()} tokens, fewer than one window of {seq_len}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: min(count, total)]
    return stream[: total * seq_len].view(total, seq_len)[order].long()


class AdapterTrainer:
    def __init__(self, config: AdapterTrainConfig) -> None:
        config.validate()
        self.config = config
        self.world: World = init_world()
        self.out = Path(config.output_dir)
        if self.out.exists() and not self.out.is_dir():
            raise LayerskipError(f"`output_dir` {self.out} is a file")

    # ---- setup -------------------------------------------------------------------------------
    def _prepare_output(self) -> None:
        cfg_path = self.out / CONFIG_FILE
        if cfg_path.exists():
            _check_resumable(cfg_path, self.config)
        elif self.out.exists() and any(self.out.iterdir()):
            raise LayerskipError(f"`output_dir` {self.out} is not empty and holds no train-adapter run")
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = cfg_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(self.config), indent=2) + "\n")
            tmp.replace(cfg_path)
        self.world.barrier()

    def _data(self, loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], torch.Tensor]:
        """Training windows, validation windows, held-out prompts, and the frequency ranking."""
        cfg, tokenizer = self.config, loaded.tokenizer
        documents = corpus.corpus_documents(cfg.corpus, cfg.text_field)
        train_docs, val_docs = corpus.split_documents(documents)
        eos = corpus.document_separator(tokenizer)
        stream = corpus.tokenize_stream(train_docs, tokenizer, eos)
        ranking = frequency_ranking(stream, loaded.model.config.vocab_size)
        train = _windows(stream, cfg.max_tokens // cfg.seq_len, cfg.seq_len, cfg.seed)
        val_stream = corpus.tokenize_stream(val_docs, tokenizer, eos)
        val = _windows(val_stream, 16, cfg.seq_len, cfg.seed) if val_stream.numel() >= cfg.seq_len else train[-1:]
        prompts: list[list[int]] = []
        for doc in val_docs:
            if len(prompts) == cfg.eval_prompts:
                break
            ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"][:64]
            if len(ids) >= 16:
                prompts.append(ids)
        return train, val, prompts, ranking

    def _features(self, model, windows: torch.Tensor, name: str, progress: bool) -> dict[str, torch.Tensor]:
        cfg = self.config
        spec = FeatureSpec(base_fingerprint(model), cfg.exit_layer, cfg.seq_len, cfg.top_k,
                           f"{cfg.corpus}|{cfg.text_field}|seed {cfg.seed}|{name}")
        directory = self.out / "features" / name
        if self.world.is_main:
            check_or_write_meta(directory, spec)
        self.world.barrier()
        shards = (windows.shape[0] + 15) // 16
        with tqdm(total=len(range(self.world.rank, shards, self.world.size)), desc=f"features ({name})", unit="shard",
                  disable=not progress or not self.world.is_main) as bar:
            count = extract_features(model, windows, directory, spec, 16, self.world.rank, self.world.size, on_shard=bar.update)
        self.world.barrier()
        return load_features(directory, count)

    # ---- training ----------------------------------------------------------------------------
    def _student_logits(self, model, adapter: DraftAdapter, head_weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """hidden ``[B, T, dim]`` = ``h_E`` -> draft-vocabulary logits ``[B, T, N]``."""
        _, cos, sin, _ = model.slot_inputs(None, 0, hidden.shape[1], hidden.shape[0])
        return F.linear(model.model.norm(adapter(hidden, cos, sin)), head_weight)

    def _evaluate(self, model, adapter, head_weight, index, val: dict[str, torch.Tensor], prompts, adapter_dir: Path) -> dict[str, float]:
        adapter.eval()
        with torch.no_grad():
            agree = []
            for i in range(0, val["hidden"].shape[0], 4):
                logits = self._student_logits(model, adapter, head_weight, val["hidden"][i : i + 4].float().to(model.device))
                agree.append(soft_target_loss(logits, val["top_ids"][i : i + 4].to(model.device),
                                              val["top_logp"][i : i + 4].to(model.device), index)[1])
        adapter.train()
        result = {"val_agreement": float(torch.stack(agree).mean())}
        if prompts:
            cfg = self.config
            drafter = AdapterDrafter(adapter_dir, cfg.num_speculations, draft_vocab=cfg.draft_vocab or None)
            gen = GenerationConfig(max_steps=cfg.eval_tokens, sampling=SamplingConfig(sample=False),
                                   stop_token_ids=tuple(model.config.eos_token_ids))
            drafted = accepted = 0
            for ids in prompts:
                stats = generate(model, ids, gen, Decoding(drafter)).stats
                drafted, accepted = drafted + stats.drafted_tokens, accepted + stats.accepted_tokens
            result["acceptance"] = accepted / drafted if drafted else 0.0
        return result

    def _save(self, adapter: DraftAdapter, optimizer: torch.optim.Optimizer, step: int, ranking: torch.Tensor,
              metrics: dict[str, Any]) -> Path:
        """The crash-safe training checkpoint (``checkpoint/``), then the current adapter, loadable as
        ``adapter/`` (with its draft vocabulary ranking and training record)."""
        tensors = {k: v.detach().float().contiguous().clone() for k, v in adapter.state_dict().items()}
        save_checkpoint(self.out / "checkpoint", tensors, {"step": step, "metrics": metrics}, {"optimizer": optimizer.state_dict()})
        final = self.out / "adapter"
        save_adapter(adapter, final, {"step": step, "training": asdict(self.config), "metrics": metrics})
        save_ranking(final, ranking)
        return final

    def _drop_log_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: forget their log records (and a cut last line)."""
        if self.world.is_main:
            keep_records(self.out / LOG_FILE, lambda r: isinstance(r, dict) and r.get("step", 0) <= step, "log record")

    def _log(self, record: dict[str, Any]) -> None:
        if self.world.is_main:
            with (self.out / LOG_FILE).open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def run(self, progress: bool = True) -> Path:
        cfg = self.config
        self._prepare_output()
        loaded = load(cfg.model, device=cfg.device, dtype="float32", prepare=False)
        model = loaded.model
        check_exit_layer(cfg.exit_layer, model.num_layers)
        init_layer = {"exit": cfg.exit_layer, "last": model.num_layers - 1, "random": None}[cfg.init]
        adapter = init_adapter(model, cfg.exit_layer, cfg.architecture, init_layer, str(cfg.model or "layerskip-pycode"))
        if cfg.init_from is not None:  # warm start: a trained adapter of this base (its fingerprint is checked)
            adapter.load_state_dict(load_adapter(cfg.init_from, model).state_dict())
        prepare_for_inference(model)  # the base only runs inference from here on
        if cfg.draft_vocab >= model.config.vocab_size:
            raise LayerskipError(f"`draft_vocab` {cfg.draft_vocab} is not below the vocabulary size {model.config.vocab_size} (0: full)")
        train_windows, val_windows, prompts, ranking = self._data(loaded)
        vocab = model.config.vocab_size
        subset = (draft_subset(ranking, cfg.draft_vocab, model.config.eos_token_ids, vocab) if 0 < cfg.draft_vocab < vocab
                  else torch.arange(vocab))
        index = vocabulary_index(subset.to(model.device), vocab)
        head_weight = model.lm_head.weight[subset.to(model.device)].contiguous()
        train = self._features(model, train_windows, "train", progress)
        val = self._features(model, val_windows, "val", progress)

        optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        step = 0
        checkpoint = recover(self.out / "checkpoint") if self.world.is_main else None
        checkpoint = self.world.broadcast(checkpoint)
        if checkpoint is not None:
            adapter.load_state_dict(checkpoint.tensors())
            optimizer.load_state_dict(checkpoint.state()["optimizer"])
            step = checkpoint.step
            self._drop_log_after(step)
        adapter.train().requires_grad_(True)
        n = train["hidden"].shape[0]
        bar = tqdm(total=cfg.steps, initial=step, desc="train-adapter", unit="step", disable=not progress or not self.world.is_main)
        metrics: dict[str, Any] = {}
        while step < cfg.steps:
            lr = learning_rate(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = torch.randint(0, n, (cfg.batch_size,), generator=corpus.batch_generator(cfg.seed, step, 0, self.world.rank))
            logits = self._student_logits(model, adapter, head_weight, train["hidden"][rows].float().to(model.device))
            loss, agreement = soft_target_loss(logits, train["top_ids"][rows].to(model.device), train["top_logp"][rows].to(model.device), index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.world.size > 1:
                for param in adapter.parameters():
                    dist.all_reduce(param.grad)
                    param.grad /= self.world.size
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", agree=f"{float(agreement):.2f}")
            if step % 10 == 0:
                self._log({"step": step, "loss": float(loss.detach()), "train_agreement": float(agreement), "lr": lr})
            if step % cfg.eval_every == 0 or step == cfg.steps:
                if self.world.is_main:
                    current = self._save(adapter, optimizer, step, ranking, metrics)
                    metrics = {"step": step, **self._evaluate(model, adapter, head_weight, index, val, prompts, current)}
                    # the evaluation drafts with the saved adapter; its record then carries that evaluation
                    save_adapter(adapter, current, {"step": step, "training": asdict(self.config), "metrics": metrics})
                    self._log(metrics)
                    bar.write(json.dumps(metrics))
                self.world.barrier()
        bar.close()
        return self._finish(adapter, optimizer, step, ranking, metrics)

    def _finish(self, adapter: DraftAdapter, optimizer, step: int, ranking: torch.Tensor, metrics: dict[str, Any]) -> Path:
        if self.world.is_main:
            self._save(adapter, optimizer, step, ranking, metrics)
        self.world.barrier()
        return self.out / "adapter"
