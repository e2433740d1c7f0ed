"""``layerskip eval``: lm-evaluation-harness tasks scored with layerskip's own decoding.

The flags shared with ``lm_eval run`` mean what they mean there (``--model_args``, ``--gen_kwargs``,
``--output_path``, ``--batch_size auto``, ``--log_samples``, ...); the output is lm-eval's own
(``layerskip.evaluation.lm_eval_output``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from layerskip.decoding.chat import require_chat_template
from layerskip.cli.arguments import add, add_generation_arguments, add_model_arguments, add_progress, subcommand
from layerskip.cli.settings import generation_config, strategy
from layerskip.errors import LayerskipError
from layerskip.evaluation.records import environment
from layerskip.checkpoints.loading import load
from layerskip.validation import writable_dir, writable_file

#: --model_args keys and the flag each one sets (lm-eval's ``pretrained`` is --model)
MODEL_ARGS = {"pretrained": "model", "model": "model", "dtype": "dtype", "device": "device", "quantize": "quantize",
              "batch_size": "batch_size", "max_batch_size": "max_batch_size", "max_length": "max_length"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(
        subparsers, "eval", "run lm-evaluation-harness tasks with layerskip decoding",
        "Run lm-evaluation-harness (0.4.x) tasks on layerskip's decoding: generate_until requests use the chosen "
        "strategy (and gain its speed-up), log-likelihood requests run the full model. Output is lm-eval's own "
        "(results JSON, samples JSONL with --log_samples, its summary table) plus the speed of the generation "
        "requests. Decoding is greedy unless --sample True, a task's generation_kwargs or --gen_kwargs say otherwise.",
        "layerskip eval --tasks layerskip_code_completion --include_path tests/lm_eval_tasks "
        "--generation_strategy self_speculative --limit 10 --output_path ./logs")
    add_model_arguments(parser)
    add_generation_arguments(parser)
    group = parser.add_argument_group("lm-eval (as in lm_eval run)")
    add(group, "tasks", nargs="+", required=True, help="task names (comma- or space-separated)")
    add(group, "model_args", default=None,
        help="model settings as key=val,key2=val2: pretrained (= --model), dtype, device, quantize, batch_size, "
             "max_batch_size, max_length; they override the flags")
    add(group, "gen_kwargs", default=None,
        help="generation settings for every generate_until task, over the task's own generation_kwargs, as "
             "key=val,key2=val2 (do_sample, temperature, top_p, top_k, max_gen_toks, until)")
    add(group, "limit", type=float, default=None, help="examples per task (a fraction if < 1; default: all)")
    add(group, "num_fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    add(group, "include_path", default=None, help="a directory of local task YAMLs")
    add(group, "output_path", "output_dir", default="./logs",
        help="directory of the results (OUTPUT_PATH/<model>/results_<time>.json) or a .json file name; "
             "--output_dir is upstream LayerSkip's name")
    add(group, "log_samples", type=bool, default=False, help="also write every sample (samples_<task>_<time>.jsonl)")
    add(group, "predict_only", type=bool, default=False, help="generate and save the outputs, skip the metrics (implies --log_samples)")
    add(group, "batch_size", default="8",
        help="batch size of log-likelihood requests: an integer, or auto (the largest that fits the free memory)")
    add(group, "max_batch_size", type=int, default=64, help="upper bound of --batch_size auto")
    add(group, "max_length", type=int, default=None, help="longest context in tokens (default: the model's, at most 4096)")
    add(group, "apply_chat_template", type=bool, default=False,
        help="render each request (with its few-shot examples) through the tokenizer's chat template")
    add(group, "system_instruction", default=None, help="a system instruction prepended to every request")
    add(group, "fewshot_as_multiturn", type=bool, default=None,
        help="few-shot examples as a multi-turn conversation (needs --apply_chat_template; default: on with it)")
    add(group, "use_cache", default=None, help="sqlite file caching the model's responses (reruns skip them)")
    add(group, "confirm_run_unsafe_code", type=bool, default=False, help="allow tasks that execute model-written code")
    add_progress(parser)
    # eval decodes greedily by default, as lm-eval's models do; a task or --gen_kwargs may ask to sample
    parser.set_defaults(handler=run, sample=False)


def apply_model_args(args: argparse.Namespace) -> None:
    """Set the flags that --model_args names (lm-eval's key=val,key2=val2)."""
    if not args.model_args:
        return
    from lm_eval.utils import simple_parse_args_string

    for key, value in simple_parse_args_string(args.model_args).items():
        if key not in MODEL_ARGS:
            raise LayerskipError(f"--model_args: unknown key {key!r} (known: {', '.join(sorted(MODEL_ARGS))})")
        if key in ("max_batch_size", "max_length"):
            value = int(value)
        elif key != "batch_size":  # batch_size: an integer or auto, checked by batch_size()
            value = str(value)
        setattr(args, MODEL_ARGS[key], value)


def batch_size(value: Any) -> int | str:
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise LayerskipError(f"--batch_size must be a positive integer or auto, got {value!r}")


def check_flags(args: argparse.Namespace) -> None:
    """Everything refused before lm-eval or the model loads."""
    if args.include_path and not Path(args.include_path).is_dir():
        raise LayerskipError(f"--include_path {args.include_path}: not a directory")
    if args.fewshot_as_multiturn and not args.apply_chat_template:
        raise LayerskipError("--fewshot_as_multiturn True needs --apply_chat_template True")
    if args.limit is not None and args.limit <= 0:
        raise LayerskipError(f"--limit must be > 0, got {args.limit:g}")
    if args.max_length is not None and args.max_length < 2:
        raise LayerskipError(f"--max_length must be >= 2, got {args.max_length}")
    if args.output_path.endswith(".json"):
        writable_file(args.output_path, "--output_path")
    else:
        writable_dir(args.output_path, "--output_path")


def data_error(exc: BaseException) -> LayerskipError | None:
    """One line for a task whose data cannot be read (missing local file, hub data offline)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return LayerskipError(f"a task's data was not found ({text}); a local task's relative data_files are looked for "
                              f"from the working directory ({Path.cwd()}), then beside the task's YAML")
    if any(word in text.lower() for word in ("offline", "connect", "couldn't find", "hub", "resolve", "network")):
        return LayerskipError(
            f"a task's data is not available offline ({text}). Point the task at local data: write a task YAML "
            "with `dataset_path: json` and `dataset_kwargs: {data_files: {test: FILE.jsonl}}` in a directory and "
            "pass --include_path DIR")
    return None


def run(args: argparse.Namespace) -> int:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LayerskipError("lm-eval is not installed: pip install 'lm-eval>=0.4.9,<0.5'") from None
    from layerskip.evaluation import lm_eval_output
    from layerskip.evaluation.local_tasks import task_specs
    from layerskip.evaluation.lm_eval_adapter import LayerskipLM

    apply_model_args(args)
    args.batch_size = batch_size(args.batch_size)
    check_flags(args)
    log_samples = args.log_samples or args.predict_only
    tasks = [t for item in args.tasks for t in item.split(",") if t]
    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LayerskipError(f"unknown task(s) {', '.join(unknown)} (local tasks need --include_path DIR)")
    loaded = load(args.model, args.device, args.dtype, args.quantize, compile=args.compile)
    if args.apply_chat_template:
        require_chat_template(loaded.tokenizer)
    config = generation_config(args, loaded)
    lm = LayerskipLM(loaded, strategy(args, loaded.recommended), config,
                     batch_size=args.batch_size, max_batch_size=args.max_batch_size, max_length=args.max_length,
                     seed=args.seed, progress=not args.no_progress)
    evaluation_tracker = lm_eval_output.tracker(args.output_path)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, model_args={"pretrained": args.model or loaded.path.name}, tasks=task_specs(manager, tasks),
            num_fewshot=args.num_fewshot, limit=args.limit, task_manager=manager, log_samples=log_samples,
            evaluation_tracker=evaluation_tracker, gen_kwargs=args.gen_kwargs, use_cache=args.use_cache,
            system_instruction=args.system_instruction, apply_chat_template=args.apply_chat_template,
            fewshot_as_multiturn=bool(args.apply_chat_template if args.fewshot_as_multiturn is None else args.fewshot_as_multiturn),
            predict_only=args.predict_only, confirm_run_unsafe_code=args.confirm_run_unsafe_code,
            random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed, fewshot_random_seed=args.seed,
        )
    except (ConnectionError, OSError, ValueError) as exc:
        error = data_error(exc)
        if error is None:
            raise
        raise error from None
    speed = lm.speed_summary()
    block = {"generation_strategy": args.generation_strategy, "draft": lm.strategy.draft.to_dict(), "speed": speed,
             "model_path": str(loaded.path), "environment": environment(loaded.model.device, loaded.model.dtype)}
    files = lm_eval_output.save(evaluation_tracker, results, block)
    print(lm_eval_output.tables(results))
    line = lm_eval_output.speed_line(speed)
    if line:
        print(line)
    for path in files:
        print(f"wrote {path}", file=sys.stderr)
    return 0
