"""``LLM``: a checkpoint and its decoding strategy, loaded once, decoding prompts, conversations and streams.

    from layerskip import LLM, SamplingParams

    llm = LLM("smollm2-135m-instruct")              # any --model value; its recommended draft by default
    out = llm.generate(["def fib(n):"], SamplingParams(temperature=0.0, max_tokens=64))
    print(out[0].outputs[0].text, out[0].outputs[0].metrics["tokens_per_second"])

Every decoding option of the command line is a keyword argument spelled like its flag (``dtype``,
``device``, ``quantize``, ``compile``, ``threads``, ``generation_strategy``, ``exit_layer``,
``num_speculations``, ``draft``, ``draft_adapter``, ``draft_vocab``, ``draft_length``, ``draft_control``,
``prompt_lookup_*``, ``criteria``, ``skip_layers``, ``draft_config``, ...). Without
``generation_strategy``, a checkpoint that recommends a self-speculative setting decodes with it, any
other autoregressively; flags given on top of a recommendation override it. Prompts are decoded
together, ``batch_size`` rows at a time (``layerskip.decoding.engine``: rows join as others finish);
every row's greedy output equals its output alone, and greedy self-speculative output equals
autoregressive output, in float32 (``layerskip correctness``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Iterator, Sequence

from layerskip.api.outputs import CompletionOutput, RequestOutput
from layerskip.api.params import SamplingParams
from layerskip.checkpoints.loading import load
from layerskip.decoding.chat import Message, encode_chat
from layerskip.decoding.detokenize import IncrementalText
from layerskip.decoding.results import GenerationResult
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate_many, generate_steps
from layerskip.decoding.strategy import NAMES, Strategy
from layerskip.drafters.config import DraftConfig, load_draft_config, parse_skip_layers
from layerskip.errors import LayerskipError
from layerskip.kernels.threads import check_threads, set_threads

#: the keyword arguments that describe the draft (``DraftConfig``'s fields, the skip-layers JSON, a file)
DRAFT_OPTIONS = frozenset({f.name for f in fields(DraftConfig)} | {"skip_layers", "draft_config"})

Prompt = str | Sequence[int]


class LLM:
    """A model and one decoding strategy (module docstring). ``seed``: the drafters' own randomness
    (random layer skipping); a request's sampling follows its ``SamplingParams.seed``. ``batch_size``:
    the most prompts decoded at once."""

    def __init__(self, model: str | None = None, *, dtype: str = "auto", device: str = "auto", quantize: str = "none",
                 compile: bool = False, threads: int | None = None, generation_strategy: str | None = None,
                 seed: int = 0, batch_size: int = 8, **draft: Any) -> None:
        unknown = sorted(set(draft) - DRAFT_OPTIONS)
        if unknown:
            raise TypeError(f"LLM() got unexpected keyword argument(s) {', '.join(unknown)}")
        if generation_strategy is not None and generation_strategy not in NAMES:
            raise LayerskipError(f"`generation_strategy` must be one of {', '.join(NAMES)}, got {generation_strategy!r}")
        if threads is not None:
            set_threads(check_threads(threads, "`threads`"))
        if batch_size < 1:
            raise LayerskipError(f"`batch_size` must be >= 1, got {batch_size}")
        self.seed, self.batch_size = seed, batch_size
        self.loaded = load(model, device, dtype, quantize, compile=compile)
        self.model, self.tokenizer = self.loaded.model, self.loaded.tokenizer
        self.strategy = self._strategy(generation_strategy, dict(draft))
        self.strategy.validate(self.model.num_layers)

    def _strategy(self, name: str | None, draft: dict[str, Any]) -> Strategy:
        """The strategy of the keyword arguments over the checkpoint's recommendation."""
        recommended = self.loaded.recommended
        config_file, skip_layers = draft.pop("draft_config", None), draft.pop("skip_layers", None)
        if name is None:
            wants_draft = draft.get("draft") not in (None, "model") or draft.get("exit_layer") is not None
            complete = bool(recommended) and DraftConfig.from_dict(recommended, "the model's recommended setting").is_complete
            name = "self_speculative" if complete or wants_draft else "autoregressive"
        if config_file:
            base = load_draft_config(config_file)
        elif name == "self_speculative" and recommended:
            base = DraftConfig.from_dict(recommended, "the model's recommended setting")
        else:
            base = DraftConfig()
        skips = parse_skip_layers(skip_layers) if skip_layers else {}
        return Strategy("layerskip", name, base.merged(**draft, **skips))

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` (special tokens left out)."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _ids(self, prompt: Prompt) -> list[int]:
        ids = self.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise LayerskipError("a prompt encodes to no tokens")
        return ids

    def _run_many(self, prompts: Sequence[str | None], encoded: list[list[int]],
                  params: list[SamplingParams]) -> list[RequestOutput]:
        """The prompts' outputs, decoded ``batch_size`` rows at a time."""
        eos, vocab = self.loaded.eos_token_ids, self.model.config.vocab_size
        configs = [p.generation_config(eos, vocab) for p in params]
        decoding = self.strategy.decoding(self.model.num_layers, self.seed)
        results, _ = generate_many(self.model, encoded, configs, decoding, self.batch_size, self.decode)
        return [RequestOutput(str(i), prompt, ids, [self._completion(result, sp)])
                for i, (prompt, ids, result, sp) in enumerate(zip(prompts, encoded, results, params))]

    def _settings(self, params: SamplingParams) -> tuple[GenerationConfig, Decoding]:
        config = params.generation_config(self.loaded.eos_token_ids, self.model.config.vocab_size)
        return config, self.strategy.decoding(self.model.num_layers, self.seed)

    def _completion(self, result: GenerationResult, params: SamplingParams) -> CompletionOutput:
        text, stats = self.decode(result.token_ids), result.stats
        finish, stop_reason = ("length", None) if stats.stop_reason == "max_steps" else ("stop", None)
        if stats.stop_reason == "stop_word":
            cut = min((text.find(s), s) for s in params.stop_strings if s in text)
            text, stop_reason = text[: cut[0]], cut[1]
        elif stats.stop_reason == "stop_token":
            stop_reason = result.token_ids[-1]
        return CompletionOutput(0, text, list(result.token_ids), finish, stop_reason, stats.as_dict())

    @staticmethod
    def _params(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams()] * n
        if isinstance(params, SamplingParams):
            return [params] * n
        params = list(params)
        if len(params) != n:
            raise LayerskipError(f"{len(params)} sampling params for {n} prompts")
        return params

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """One ``RequestOutput`` per prompt (text or token ids), in order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)  # type: ignore[arg-type]
        params = self._params(sampling_params, len(prompts))
        encoded = [self._ids(p) for p in prompts]  # every prompt checked before any decoding
        return self._run_many([p if isinstance(p, str) else None for p in prompts], encoded, params)

    def chat(self, messages: list[Message] | Sequence[list[Message]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """The assistant's next turn for one conversation (a list of ``{"role", "content"}`` messages) or
        for each of several, through the tokenizer's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)  # type: ignore[list-item]
        params = self._params(sampling_params, len(conversations))
        encoded = [encode_chat(self.tokenizer, list(c)) for c in conversations]  # type: ignore[arg-type]
        return self._run_many([None] * len(encoded), encoded, params)

    def stream(self, prompt: Prompt | list[Message], sampling_params: SamplingParams | None = None) -> Iterator[str]:
        """The completion's text as it is verified, piece by piece; the pieces join to ``generate``'s text
        (a stop string's possible beginning is held back until it is known not to be one)."""
        params = sampling_params or SamplingParams()
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            ids = encode_chat(self.tokenizer, prompt)  # type: ignore[arg-type]
        else:
            ids = self._ids(prompt)  # type: ignore[arg-type]
        config, decoding = self._settings(params)
        text, sent = IncrementalText(self.decode), 0
        hold = max((len(s) for s in params.stop_strings), default=1) - 1
        result = None
        # decoded in this thread, between the pieces it yields (the model's own OpenMP team: another
        # thread would start a second one, slower on a few cores: layerskip.serve.engine_loop)
        for output in generate_steps(self.model, ids, config, decoding, self.decode):
            result = output.result
            for token in output.token_ids:
                text.push(token)
            found = [text.text.find(s) for s in params.stop_strings if s in text.text]
            ready = min(found) if found else len(text.text) - hold  # never past a stop string's start
            if ready > sent:
                yield text.text[sent:ready]
                sent = ready
        assert result is not None
        final = self._completion(result, params).text
        if len(final) > sent:
            yield final[sent:]
