"""``layerskip serve`` end to end: a server process started by the test (``python -m layerskip serve`` on a
free loopback port) and the real ``openai`` client (plus raw httpx for what the client will not send).
Every wait has a timeout; the processes are killed at teardown whatever happened."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from helpers import assert_one_line_error, run_cli

KEY = "test-key-123"
NAME = "tiny-chat"
START_TIMEOUT = 60.0


class Server:
    def __init__(self, args: list[str], log: Path, home: Path) -> None:
        self.log = log
        env = dict(os.environ, LAYERSKIP_HOME=str(home), HF_HUB_OFFLINE="1")
        env.pop("LAYERSKIP_API_KEY", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "layerskip", "serve", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
        deadline = time.monotonic() + START_TIMEOUT
        port = None
        while port is None:
            match = re.search(r"on http://127\.0\.0\.1:(\d+)/v1", log.read_text())
            if match:
                port = int(match.group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            else:
                time.sleep(0.1)
        self.url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not become healthy:\n{log.read_text()}")
            time.sleep(0.1)

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=30)

    def post(self, path: str, body: dict | None = None, content: bytes | None = None, key: str | None = KEY,
             **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if content is not None:
            headers["Content-Type"] = "application/json"
        return httpx.post(f"{self.url}{path}", json=body, content=content, headers=headers, timeout=30, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tiny_chat_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny chat checkpoint, self-speculative, greedy by default, 4 rows."""
    tmp = tmp_path_factory.mktemp("serve")
    srv = Server(["--model", str(tiny_chat_dir), "--dtype", "float32", "--sample", "False", "--api_key", KEY,
                  "--served_model_name", NAME, "--max_num_seqs", "4", "--max_model_len", "2048",
                  "--generation_strategy", "self_speculative", "--exit_layer", "2", "--num_speculations", "3",
                  "--max_request_bytes", "65536", "--threads", "1", "--log_level", "warning"],
                 tmp / "server.log", tmp / "home")
    yield srv
    srv.stop()


LONG = {"ignore_eos": True}  # vLLM's extension: the tiny model runs to max_tokens


def test_completions_plain_and_streamed(server: Server) -> None:
    client = server.client()
    out = client.completions.create(model=NAME, prompt="def add(a, b):", max_tokens=24, temperature=0, extra_body=LONG)
    choice = out.choices[0]
    assert choice.finish_reason == "length" and out.model == NAME and out.object == "text_completion"
    assert out.usage.completion_tokens == 24 and out.usage.total_tokens == out.usage.prompt_tokens + 24
    assert choice.text
    chunks = list(client.completions.create(model=NAME, prompt="def add(a, b):", max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True}, extra_body=LONG))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == 24
    # token-id prompts; the default length is --max_steps, cut to the context
    ids = client.completions.create(model=NAME, prompt=[5, 6, 7], max_tokens=4, temperature=0, extra_body=LONG)
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 4


def test_chat_system_multi_turn_and_stream(server: Server) -> None:
    client = server.client()
    assert [m.id for m in client.models.list().data] == [NAME]
    one = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "def add(a, b):"}]
    many = [*one, {"role": "assistant", "content": "return a + b"}, {"role": "user", "content": "for i in range(10):"}]
    first = client.chat.completions.create(model=NAME, messages=one, max_completion_tokens=16, extra_body=LONG)
    second = client.chat.completions.create(model=NAME, messages=many, max_tokens=16, extra_body=LONG)
    assert first.choices[0].message.role == "assistant" and first.object == "chat.completion"
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 5  # the whole conversation is the prompt
    assert first.choices[0].finish_reason == "length" and first.usage.completion_tokens == 16
    chunks = list(client.chat.completions.create(model=NAME, messages=many, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}, extra_body=LONG))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == second.choices[0].message.content
    assert chunks[-1].usage.total_tokens == second.usage.total_tokens


def test_stop_strings(server: Server) -> None:
    client = server.client()
    full = client.completions.create(model=NAME, prompt="class Point:", max_tokens=40, extra_body=LONG).choices[0].text
    # a stop string that first occurs inside the text: the text ends before it, finish_reason stop
    start = next(i for i in range(3, len(full) - 2) if full[i:i + 2].strip() and full.find(full[i:i + 2]) == i)
    stop = full[start:start + 2]
    cut = client.completions.create(model=NAME, prompt="class Point:", max_tokens=40, stop=[stop], extra_body=LONG)
    assert cut.choices[0].text == full[:start] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=NAME, prompt="class Point:", max_tokens=40, stop=stop, stream=True,
                                         extra_body=LONG)
    assert "".join(c.choices[0].text for c in streamed) == full[:start]


def test_concurrent_greedy_requests_equal_each_alone(server: Server) -> None:
    client = server.client()
    prompts = ["def add(a, b):", "for i in range(10):", "class Point:", "The quick brown fox", "def fib(n):",
               "print(i * i)"]
    lengths = [20, 33, 12, 40, 27, 16]

    def ask(i: int) -> str:
        return client.completions.create(model=NAME, prompt=prompts[i], max_tokens=lengths[i], temperature=0,
                                         extra_body=LONG).choices[0].text

    def ask_streamed(i: int) -> str:
        messages = [{"role": "user", "content": prompts[i]}]
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=NAME, messages=messages, max_tokens=lengths[i], temperature=0, stream=True, extra_body=LONG))

    jobs = [(ask, i) for i in range(6)] + [(ask_streamed, i) for i in (1, 3)]
    alone = [job(i) for job, i in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:  # 8 requests over 4 rows: some wait for a row, rows join and leave
        together = list(pool.map(lambda job: job[0](job[1]), jobs))
    assert together == alone


def _error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    return error


def test_bad_input_is_an_openai_error(server: Server) -> None:
    ok = {"model": NAME, "prompt": "def add(a, b):", "max_tokens": 2}
    chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        ("/v1/completions", None, b'{"prompt": "x",', 400, None),  # malformed JSON
        ("/v1/completions", None, b"[1, 2]", 400, None),
        ("/v1/completions", None, b'{"prompt": "x", "temperature": NaN}', 400, "temperature"),
        ("/v1/completions", {**ok, "temperature": "hot"}, None, 400, "temperature"),
        ("/v1/completions", {**ok, "max_tokens": "5"}, None, 400, "max_tokens"),
        ("/v1/completions", {**ok, "stream": "yes"}, None, 400, "stream"),
        ("/v1/completions", {"model": NAME}, None, 400, "prompt"),
        ("/v1/chat/completions", {"model": NAME}, None, 400, "messages"),
        ("/v1/chat/completions", {**chat, "messages": "hi"}, None, 400, "messages"),
        ("/v1/chat/completions", {**chat, "messages": []}, None, 400, "messages"),
        ("/v1/chat/completions", {**chat, "messages": [{"role": "wizard", "content": "x"}]}, None, 400,
         "messages.0.role"),
        ("/v1/completions", {**ok, "model": "gpt-4"}, None, 404, "model"),
        ("/v1/completions", {**ok, "prompt": [5] * 3000}, None, 400, "prompt"),  # longer than the context
        ("/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": "def f(): pass\n" * 800}]}, None,
         400, "messages"),
        ("/v1/completions", {**ok, "max_tokens": 100000}, None, 400, "max_tokens"),
        ("/v1/chat/completions", {**chat, "max_tokens": None, "max_completion_tokens": 100000}, None, 400,
         "max_completion_tokens"),
        ("/v1/completions", {**ok, "max_tokens": 0}, None, 400, "max_tokens"),
        ("/v1/completions", {**ok, "temperature": -0.5}, None, 400, "temperature"),
        ("/v1/completions", {**ok, "top_p": 0}, None, 400, "top_p"),
        ("/v1/completions", {**ok, "top_p": 1.5}, None, 400, "top_p"),
        ("/v1/completions", {**ok, "seed": -1}, None, 400, "seed"),
        ("/v1/completions", {**ok, "prompt": [300000]}, None, 400, "prompt"),
        ("/v1/completions", {**ok, "prompt": "x" * 70000}, None, 413, None),  # over --max_request_bytes
        ("/v1/completions", {**ok, "n": 2}, None, 400, "n"),
        ("/v1/completions", {**ok, "logprobs": 2}, None, 400, "logprobs"),
        ("/v1/completions", {**ok, "echo": True}, None, 400, "echo"),
        ("/v1/chat/completions", {**chat, "tools": [{"type": "function", "function": {"name": "f"}}]}, None, 400,
         "tools"),
        ("/v1/chat/completions", {**chat, "response_format": {"type": "json_object"}}, None, 400, "response_format"),
        ("/v1/completions", {**ok, "frobnicate": 1}, None, 400, "frobnicate"),
        ("/v1/completions", {**ok, "stream": True, "stream_options": {"continuous_usage_stats": True}}, None, 400,
         "stream_options.continuous_usage_stats"),
    ]
    for path, body, content, status, param in cases:
        _error(server.post(path, body, content), status, param)
    assert _error(server.post("/v1/completions", {**ok, "prompt": [5] * 3000}), 400, "prompt")["code"] == \
        "context_length_exceeded"
    # the openai client reads them as its own errors
    with pytest.raises(openai.BadRequestError, match="top_p"):
        server.client().completions.create(model=NAME, prompt="x", top_p=2.0)
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="nope", prompt="x")
    # defaults are accepted, unsupported parameters at their defaults too; the server still serves
    fine = server.post("/v1/completions", {**ok, "n": 1, "logprobs": None, "presence_penalty": 0, "user": "u"})
    assert fine.status_code == 200 and fine.json()["usage"]["prompt_tokens"] > 0
    assert server.post("/v1/nothing", ok).status_code == 404
    assert "Traceback" not in server.log.read_text()


def test_api_key(server: Server) -> None:
    for key in (None, "wrong", KEY + "x"):
        response = server.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, key=key)
        assert _error(response, 401, None)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # health and metrics need no key


def test_disconnect_frees_the_row_and_metrics(server: Server) -> None:
    aborted = server.metric("layerskip:requests_total", outcome="aborted")
    generated = server.metric("layerskip:generation_tokens_total")
    body = {"model": NAME, "prompt": "def fib(n):", "max_tokens": 2000, "stream": True, **LONG}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=30) as response:
        assert response.status_code == 200
        lines = 0
        for line in response.iter_lines():
            lines += bool(line.startswith("data: "))
            if lines >= 3:
                break  # leave mid-stream: the connection closes
    wait_for(lambda: server.metric("layerskip:requests_total", outcome="aborted") > aborted
             and server.metric("layerskip:num_requests_running") == 0, "the disconnected request was not aborted")
    assert server.metric("layerskip:generation_tokens_total") - generated < 2000  # it did not run to the end
    assert httpx.get(f"{server.url}/health", timeout=10).json()["queued_or_running"] == 0
    # the counters of what ran before (self-speculative: drafts were checked)
    assert server.metric("layerskip:spec_decode_num_drafts_total") > 0
    assert server.metric("layerskip:spec_decode_num_draft_tokens_total") >= \
        server.metric("layerskip:spec_decode_num_accepted_tokens_total")
    assert server.metric("layerskip:time_to_first_token_seconds_count") > 0
    assert server.metric("layerskip:inter_token_latency_seconds_count") > 0
    assert server.metric("layerskip:requests_total", outcome="length") > 0
    assert server.metric("layerskip:requests_total", outcome="invalid") > 0
    assert server.metric("layerskip:prompt_tokens_total") > 0


def test_queue_full_then_sigterm_exits_0(tmp_path: Path) -> None:
    """The shipped model, one row and one queue place: a third request is a 429 with Retry-After; SIGTERM
    with two requests in flight cancels them after the grace period and exits 0."""
    srv = Server(["--dtype", "float32", "--sample", "False", "--max_num_seqs", "1", "--max_queue_size", "1",
                  "--max_model_len", "1024", "--shutdown_timeout", "1", "--threads", "1"],
                 tmp_path / "server.log", tmp_path / "home")
    try:
        client = srv.client(None)
        name = client.models.list().data[0].id
        assert name == "layerskip-pycode"
        assert client.completions.create(model=name, prompt="def fib(n):", max_tokens=3).usage.completion_tokens <= 3
        received: list[int] = [0, 0]

        def consume(i: int) -> None:
            try:
                for _ in client.completions.create(model=name, prompt="def fib(n):", max_tokens=1000, stream=True,
                                                   extra_body=LONG):
                    received[i] += 1
            except (openai.APIError, httpx.HTTPError):
                pass  # cut off at shutdown

        threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(2)]
        for thread in threads:
            thread.start()
        wait_for(lambda: httpx.get(f"{srv.url}/health", timeout=10).json()["queued_or_running"] == 2, "both queued")
        full = srv.post("/v1/completions", {"prompt": "x", "max_tokens": 2}, key=None)
        assert _error(full, 429, None)["code"] == "queue_full" and full.headers["retry-after"]
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=name, prompt="x", max_tokens=2)
        assert srv.metric("layerskip:requests_total", outcome="rejected") == 2
        wait_for(lambda: srv.metric("layerskip:num_requests_running") == 1, "one row runs")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0, srv.log.read_text()
        for thread in threads:
            thread.join(10)
        assert max(received) > 0, received
        assert "Traceback" not in srv.log.read_text()
    finally:
        srv.stop()


def test_cli_errors_are_one_line(tiny_dir: Path) -> None:
    assert_one_line_error(run_cli("serve", "--model", str(tiny_dir), "--max_model_len", "999999"), "--max_model_len")
    assert_one_line_error(run_cli("serve", "--model", str(tiny_dir), "--max_num_seqs", "0"), "--max_num_seqs")
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = str(busy.getsockname()[1])
        assert_one_line_error(run_cli("serve", "--model", str(tiny_dir), "--dtype", "float32", "--port", port),
                              "cannot listen")
    finally:
        busy.close()


def test_a_failed_step_fails_its_requests_not_the_server(tiny_model) -> None:
    """In-process: the engine thread survives a step that raises (its requests get a 500, the engine is
    rebuilt, the next request is served)."""
    import asyncio

    from layerskip.decoding.engine import Engine
    from layerskip.decoding.sampling import SamplingConfig
    from layerskip.decoding.settings import GenerationConfig
    from layerskip.serve.engine_loop import EngineLoop, Failed, Finished, Submission
    from layerskip.serve.metrics import Metrics

    built: list[Engine] = []

    def make() -> Engine:
        engine = Engine(tiny_model, max_rows=2, max_length=64)
        if not built:
            def broken() -> list:
                raise RuntimeError("boom")
            engine.step = broken  # type: ignore[method-assign]
        built.append(engine)
        return engine

    metrics = Metrics("tiny")
    engine_loop = EngineLoop(make, metrics, capacity=4)
    engine_loop.start()
    config = GenerationConfig(max_steps=5, sampling=SamplingConfig(sample=False))

    async def last_event(submission: Submission):
        while True:
            event = await asyncio.wait_for(submission.events.get(), 20)
            if isinstance(event, (Failed, Finished)):
                return event

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first = Submission([3, 4, 5], config, None, loop)
        engine_loop.submit(first)
        failed = await last_event(first)
        assert isinstance(failed, Failed) and failed.status == 500
        second = Submission([3, 4, 5], config, None, loop)
        engine_loop.submit(second)
        done = await last_event(second)
        assert isinstance(done, Finished) and len(done.result.token_ids) == 5

    try:
        asyncio.run(main())
        assert engine_loop.alive and engine_loop.active == 0 and len(built) == 2
    finally:
        engine_loop.close()
    assert not engine_loop.alive
