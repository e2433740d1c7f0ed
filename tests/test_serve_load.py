"""``benchmarks/serve_load.py``: servers started, loaded by concurrent streaming clients and stopped, phase by
phase, with a resumable JSON of results and a table of ratios (the tiny chat model; timings not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
sys.path.insert(0, str(SCRIPT.parent))

import serve_load  # noqa: E402


def test_quantiles_and_inter_token_latency():
    assert serve_load._quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert serve_load._quantile([5.0], 0.95) == 5.0 and serve_load._quantile([], 0.5) is None
    assert serve_load.Request(ok=True, output_tokens=5, ttft=0.2, last=1.0).inter_token == 0.2
    assert serve_load.Request(ok=True, output_tokens=1, ttft=0.2, last=0.2).inter_token is None


def test_phases_of_a_round_share_no_prompt_and_servers_share_each_phase():
    prompts = [f"p{i}" for i in range(60)]
    phases = [serve_load.phase_prompts(prompts, [1, 4, 8], 3, c, 0) for c in (1, 4, 8)]
    assert [len(p) for p in phases] == [3, 12, 24]
    flat = [p for phase in phases for p in phase]
    assert len(set(flat)) == len(flat) and not set(flat) & set(prompts[-serve_load.WARMUP:])
    assert serve_load.phase_prompts(prompts, [1, 4, 8], 3, 4, 0) == phases[1]
    assert not set(serve_load.phase_prompts(prompts, [1, 4, 8], 1, 1, 1)) & set(prompts[:1])


def test_rounds_are_pooled():
    entries = [dict(server="layerskip_sd", workload="chat", clients=1, round=r, output_tokens=t, wall_s=w, requests=2,
                    failed=f, errors=["e"] if f else [], ttft_p50_ms=p, ttft_p95_ms=p, itl_p50_ms=None, itl_p95_ms=5.0)
               for r, (t, w, f, p) in enumerate([(300, 2.0, 0, 10.0), (100, 2.0, 1, 30.0)])]
    (row,) = serve_load.pooled_rows(entries)
    assert row["tokens_per_second"] == 100.0 and row["requests_per_second"] == 0.75 and row["rounds"] == 2
    assert row["failed"] == 1 and row["errors"] == ["e"] and row["ttft_p50_ms"] == 20.0 and row["itl_p50_ms"] is None


def test_both_layerskip_servers_under_load_then_resume(tiny_chat_dir, tmp_path):
    output = tmp_path / "load.json"
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_chat_dir), "--servers", "layerskip_ar", "layerskip_sd",
           "--draft_args", "--exit_layer 2 --num_speculations 3", "--clients", "1", "2", "--requests", "1",
           "--max_tokens", "8", "--dtype", "float32", "--output", str(output), "--logs", str(tmp_path / "logs"),
           "--plot", str(tmp_path / "load.png"), "--phase_timeout", "120", "--request_timeout", "60"]
    env = dict(os.environ, LAYERSKIP_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = json.loads(output.read_text())
    phases = {(e["server"], e["workload"], e["clients"]) for e in entries}
    assert phases == {(s, w, c) for s in ("layerskip_ar", "layerskip_sd") for w in ("humaneval", "chat") for c in (1, 2)}
    assert all(e["failed"] == 0 and e["output_tokens"] > 0 and e["requests"] == e["clients"] for e in entries)
    sd_rows = [line for line in proc.stdout.splitlines() if "| layerskip_sd |" in line]
    assert len(sd_rows) == 4 and all(line.rstrip(" |").endswith("x") for line in sd_rows)  # the ratio to AR
    assert (tmp_path / "load.png").stat().st_size > 0
    # an existing output is never overwritten; --resume finds every phase done and starts no server
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode != 0 and "exists" in again.stderr.strip().splitlines()[-1]
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=120, env=env)
    assert resumed.returncode == 0 and "starting" not in resumed.stderr
    assert json.loads(output.read_text()) == entries
