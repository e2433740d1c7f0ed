"""``layerskip eval``: lm-evaluation-harness tasks scored with layerskip's own decoding."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from layerskip.chat import require_chat_template
from layerskip.cli.arguments import add, add_generation_arguments, add_model_arguments
from layerskip.cli.settings import generation_config, model_eos_ids, strategy
from layerskip.errors import LayerskipError
from layerskip.evaluation.records import environment
from layerskip.loading import load


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="run lm-evaluation-harness tasks with layerskip decoding")
    add_model_arguments(parser)
    add_generation_arguments(parser)
    add(parser, "tasks", nargs="+", required=True, help="task names (comma- or space-separated)")
    add(parser, "limit", type=float, default=None, help="examples per task (a fraction if < 1)")
    add(parser, "num_fewshot", type=int, default=None)
    add(parser, "include_path", default=None, help="a directory of local task YAMLs")
    add(parser, "apply_chat_template", type=bool, default=False,
        help="render each request (with its few-shot examples) through the tokenizer's chat template")
    add(parser, "log_samples", type=bool, default=False, help="also write every sample's inputs and outputs")
    add(parser, "batch_size", type=int, default=8, help="batch size of log-likelihood requests")
    parser.set_defaults(handler=run, sample=False)


def run(args: argparse.Namespace) -> int:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LayerskipError("lm-eval is not installed: pip install 'lm-eval>=0.4.9,<0.5'") from None
    from layerskip.lm_eval_adapter import LayerskipLM

    tasks = [t for item in args.tasks for t in item.split(",") if t]
    if args.include_path and not Path(args.include_path).is_dir():
        raise LayerskipError(f"--include_path {args.include_path}: not a directory")
    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LayerskipError(f"unknown task(s) {', '.join(unknown)} (local tasks need --include_path DIR)")
    loaded = load(args.model, args.device, args.dtype, args.quantize)
    if args.apply_chat_template:
        require_chat_template(loaded.tokenizer)
    config = generation_config(args, model_eos_ids(loaded.model, loaded.tokenizer))
    lm = LayerskipLM(loaded, strategy(args, loaded.recommended), config,
                     batch_size=args.batch_size, seed=args.seed)
    start = time.time()
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit, task_manager=manager,
            log_samples=args.log_samples, apply_chat_template=args.apply_chat_template,
            random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed, fewshot_random_seed=args.seed,
        )
    except (ConnectionError, OSError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if any(word in text.lower() for word in ("offline", "connect", "couldn't find", "hub", "resolve", "network")):
            raise LayerskipError(
                f"a task's data is not available offline ({text}). Point the task at local data: write a task YAML "
                "with `dataset_path: json` and `dataset_kwargs: {data_files: {test: FILE.jsonl}}` in a directory and "
                "pass --include_path DIR"
            ) from None
        raise
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "command": "eval",
        "arguments": vars(args) | {"handler": None},
        "model": str(loaded.path),
        "generation_strategy": args.generation_strategy,
        "draft": lm.strategy.draft.to_dict(),
        "results": results["results"],
        "speed": lm.speed_summary(),
        "n-shot": results.get("n-shot"),
        "wall_time_s": time.time() - start,
        "environment": environment(loaded.model.device, loaded.model.dtype),
    }
    if args.log_samples:
        document["samples"] = results.get("samples")
    path = out_dir / f"eval_{'_'.join(tasks)[:80]}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    for task, scores in results["results"].items():
        shown = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and "stderr" not in k}
        print(f"{task}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    speed = document["speed"]
    if speed["generation_requests"]:
        acc = "n/a" if speed["acceptance_rate"] is None else f"{speed['acceptance_rate']:.3f}"
        print(f"generation: {speed['tokens_per_second']:.1f} tok/s, acceptance {acc} over {speed['generation_requests']} requests")
    print(f"results: {path}", file=sys.stderr)
    return 0
