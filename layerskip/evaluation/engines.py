"""The engines that run a decoding ``Strategy`` on one prompt: layerskip's own ``generate``, and
Hugging Face transformers' ``generate`` on the same checkpoint (plain, or with
``assistant_early_exit=E`` and ``num_assistant_tokens=k`` for ``hf:self_speculative``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate, generate_many
from layerskip.checkpoints.loading import LoadedModel
from layerskip.decoding.strategy import Strategy


@dataclass
class Output:
    token_ids: list[int]
    text: str
    stats: dict[str, Any]


class LayerskipEngine:
    def __init__(self, loaded: LoadedModel, seed: int = 0) -> None:
        self.loaded = loaded
        self.seed = seed

    def run(self, spec: Strategy, prompt_ids: list[int], config: GenerationConfig) -> Output:
        model, tok = self.loaded.model, self.loaded.tokenizer
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        result = generate(model, prompt_ids, config, spec.decoding(model.num_layers, self.seed), decode=decode)
        return Output(result.token_ids, decode(result.token_ids), result.stats.as_dict())

    def run_many(self, spec: Strategy, prompts: list[list[int]], config: GenerationConfig) -> list[Output]:
        """The prompts decoded together, one row each (``generate_many``); each row's stats are its own,
        and each gains ``batch_tokens_per_second``: the batch's aggregate output tokens/s."""
        model, tok = self.loaded.model, self.loaded.tokenizer
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        results, summary = generate_many(model, prompts, config, spec.decoding(model.num_layers, self.seed), decode=decode)
        return [Output(r.token_ids, decode(r.token_ids), {**r.stats.as_dict(), "batch_tokens_per_second": summary.tokens_per_second})
                for r in results]


class TransformersEngine:
    """Hugging Face transformers' own ``generate`` on the same checkpoint and settings (one prompt at a
    time: its assisted generation refuses batches, transformers#32165)."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype, tokenizer: Any) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
        self.tokenizer = tokenizer
        self.device = device

    def run(self, spec: Strategy, prompt_ids: list[int], config: GenerationConfig) -> Output:
        s = config.sampling
        kwargs: dict[str, Any] = {"max_new_tokens": config.max_steps, "do_sample": s.sample, "pad_token_id": self.tokenizer.pad_token_id or 0}
        if s.sample:
            kwargs.update(temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        if s.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = s.no_repeat_ngram_size
        if config.stop_token_ids:
            kwargs["eos_token_id"] = list(config.stop_token_ids)
        if config.stop_words:
            kwargs.update(stop_strings=list(config.stop_words), tokenizer=self.tokenizer)
        if spec.name == "self_speculative":
            kwargs.update(assistant_early_exit=spec.exit_layer, num_assistant_tokens=spec.num_speculations,
                          num_assistant_tokens_schedule="constant")
        inputs = torch.tensor([prompt_ids], device=self.device)
        if s.sample and config.seed is not None:
            torch.manual_seed(config.seed)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        ids = out[0, len(prompt_ids):].tolist()
        n = max(len(ids), 1)
        stats = {"generated_tokens": len(ids), "total_time": elapsed, "time_per_token": elapsed / n,
                 "tokens_per_second": len(ids) / elapsed if elapsed > 0 else 0.0, "acceptance_rate": None,
                 "time_to_first_token": None, "exit_layer": spec.exit_layer, "num_speculations": spec.num_speculations}
        return Output(ids, self.tokenizer.decode(ids, skip_special_tokens=True), stats)
