"""An lm-evaluation-harness ``LM`` backed by layerskip's own decoding.

``generate_until`` runs the chosen strategy (autoregressive, self-speculative with any drafter)
with the request's ``until`` strings and ``max_gen_toks``, and records the speed of every request.
``loglikelihood`` / ``loglikelihood_rolling`` score with the full model in batched forwards:
log-likelihood tasks (multiple choice, perplexity) get **no** speed-up from self-speculative
decoding, whatever strategy is chosen; only generation tasks do. ``batch_size="auto"`` sizes each
log-likelihood batch by the free memory of the device (at most ``max_batch_size``). Both request
kinds show a progress bar (lm-eval's ``disable_tqdm``, or ``progress=False``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from tqdm import tqdm
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate_many
from layerskip.decoding.limits import free_memory
from layerskip.checkpoints.loading import LoadedModel
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy


class LayerskipLM(TemplateLM):
    def __init__(
        self,
        loaded: LoadedModel,
        strategy: Strategy = Strategy(),
        config: GenerationConfig | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        seed: int = 0,
        max_batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.strategy = strategy
        self.config = config or GenerationConfig(max_steps=256, sampling=SamplingConfig(sample=False))
        if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.batch_size = batch_size
        self.max_batch_size = max_batch_size
        self.batch_sizes: dict[int, int] = {}  # reported by lm-eval in results["config"]["batch_sizes"]
        self.progress = progress
        self.max_length = max_length or min(self.model.config.context_limit, 4096)
        self.seed = seed
        self.generation_stats: list[dict[str, Any]] = []
        strategy.validate(self.model.num_layers)  # early, before any request

    # ---- tokenization -------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        """Names the tokenizer (and so its chat template) in lm-eval's request-cache fingerprints."""
        return str(getattr(self.tokenizer, "name_or_path", "") or self.loaded.path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids; the tokenizer's BOS is not added again to a string that already starts with it
        (a chat template's output, for one)."""
        special = True if add_special_tokens is None else add_special_tokens
        if special and self.tokenizer.bos_token and string.startswith(self.tokenizer.bos_token):
            special = False
        return self.tokenizer(string, add_special_tokens=special)["input_ids"]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # ---- log-likelihood (full model) ------------------------------------------------------------
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether it is the greedy continuation.

        Requests are sorted by length and batched with right padding: the forward is causal, so
        padding after a sequence never changes its logits.
        """
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        device = self.model.device
        longest = min(self.max_length, max((len(r[1]) + len(r[2]) for r in requests), default=1))
        size = self.fitting_batch_size(longest)
        bar = tqdm(total=len(requests), desc="loglikelihood requests", disable=disable_tqdm or not self.progress)
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            inputs, spans = [], []
            for i in batch:
                _, context, continuation = requests[i]
                whole = (context + continuation)[-(self.max_length + 1) :]
                inp = whole[:-1]
                n = len(continuation)
                inputs.append(inp)
                spans.append((len(inp) - n, n, whole[-n:]))
            width = max(len(x) for x in inputs)
            ids = torch.zeros(len(inputs), width, dtype=torch.long, device=device)
            for row, inp in enumerate(inputs):
                ids[row, : len(inp)] = torch.tensor(inp, device=device)
            logprobs = self.model(ids).float().log_softmax(-1)
            for row, i in enumerate(batch):
                first, n, target = spans[row]
                lp = logprobs[row, first : first + n]
                target_t = torch.tensor(target, device=device)
                total = float(lp.gather(-1, target_t[:, None]).sum())
                greedy = bool((lp.argmax(-1) == target_t).all())
                results[i] = (total, greedy)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], (total, greedy))
            bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    def fitting_batch_size(self, length: int) -> int:
        """The batch size for sequences of ``length`` tokens: the fixed one, or for ``auto`` the most
        rows whose float32 logits and log-softmax (the largest tensors of a scoring forward) fit in
        half the free memory, between 1 and ``max_batch_size``."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        free = free_memory(self.model.device)
        per_row = length * (2 * self.model.config.vocab_size * 4 + 8 * self.model.config.hidden_size * self.model.dtype.itemsize)
        size = self.max_batch_size if free is None else max(1, min(self.max_batch_size, free // 2 // per_row))
        self.batch_sizes[length] = size
        return size

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in tqdm([r.args for r in requests], desc="loglikelihood_rolling requests",
                              disable=disable_tqdm or not self.progress):
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    self.tok_encode(string, add_special_tokens=False), self.prefix_token_id, self.max_length, 1
                )
            ]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            total = sum(s for s, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # ---- generation (the chosen strategy) -----------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation, ``batch_size`` requests decoded together (the batched engine; for
        ``auto``, as many as the longest request's KV cache allows), each with its own stop strings."""
        prepared = [self._generation_request(request) for request in requests]
        out: list[str] = []
        bar = tqdm(total=len(requests), desc="generate_until requests", disable=disable_tqdm or not self.progress)
        start = 0
        while start < len(prepared):
            longest = max(len(ids) + config.max_steps for ids, config in prepared[start : start + self.max_batch_size])
            chunk = prepared[start : start + self.fitting_batch_size(longest)]
            decoding = self.strategy.decoding(self.model.num_layers, self.seed)
            results, _ = generate_many(self.model, [ids for ids, _ in chunk], [c for _, c in chunk], decoding,
                                       decode=self.tok_decode)
            for request, (_, config), result in zip(requests[start : start + len(chunk)], chunk, results):
                text = self.tok_decode(result.token_ids)
                for stop in config.stop_words:
                    if stop:
                        text = text.split(stop)[0]
                self.generation_stats.append(result.stats.as_dict())
                self.cache_hook.add_partial("generate_until", (request.args[0], request.args[1]), text)
                out.append(text)
            start += len(chunk)
            bar.update(len(chunk))
        bar.close()
        return out

    def _generation_request(self, request: Any) -> tuple[list[int], GenerationConfig]:
        """A ``generate_until`` request's prompt ids and generation settings (its ``until`` strings, its
        ``max_gen_toks`` and sampling keywords over the run's)."""
        context, gen_kwargs = request.args
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_tokens = int(gen_kwargs.pop("max_gen_toks", self.config.max_steps))
        sampling = self.config.sampling
        if "do_sample" in gen_kwargs or "temperature" in gen_kwargs:
            temperature = float(gen_kwargs.get("temperature", sampling.temperature) or 0.0)
            do_sample = bool(gen_kwargs.get("do_sample", temperature > 0)) and temperature > 0
            sampling = replace(sampling, sample=do_sample, temperature=temperature if do_sample else sampling.temperature,
                               top_p=float(gen_kwargs.get("top_p", sampling.top_p)),
                               top_k=int(gen_kwargs.get("top_k", sampling.top_k)))
        config = replace(self.config, max_steps=max_tokens, sampling=sampling, stop_words=tuple(until),
                         stop_token_ids=tuple(dict.fromkeys([*self.config.stop_token_ids, self.eot_token_id])))
        ids = self.tok_encode(context)[-(self.max_length - max_tokens - 16) :]
        return ids, config

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat rendered by the tokenizer's template; without a generation prompt the last
        (assistant) message stays open, so that the model continues it."""
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def speed_summary(self) -> dict[str, Any]:
        """Speed of the generation requests: tokens/s over all of them, acceptance, counts."""
        stats = self.generation_stats
        tokens = sum(s["generated_tokens"] for s in stats)
        seconds = sum(s["total_time"] for s in stats)
        drafted = sum(s["drafted_tokens"] for s in stats)
        accepted = sum(s["accepted_tokens"] for s in stats)
        return {"generation_requests": len(stats), "generated_tokens": tokens, "total_time": seconds,
                "tokens_per_second": tokens / seconds if seconds else None,
                "acceptance_rate": accepted / drafted if drafted else None,
                "note": "log-likelihood requests run the full model and gain no speed-up"}
