"""The LLM engine layer: cache, deduplication, bounded reseeded retries, accounting, backends."""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.errors import BenchError
from bench.llm import ChatRequest, Completion, LazyBackend, LLMEngine, ResponseCache, SamplingParams, make_backend, make_engine
from bench.llm.scripted import ScriptedBackend


def req(text: str, seed: int = 0, tag: int = 0, **kw) -> ChatRequest:
    return ChatRequest.make([{"role": "user", "content": text}], SamplingParams(seed=seed, **kw), tag=tag)


def echo(messages, params):
    return f"echo {messages[-1]['content']} seed={params.seed}"


def test_requests_validate_messages_and_params():
    with pytest.raises(ValueError, match="content must be a str"):
        ChatRequest.make([{"role": "user", "content": ["x"]}])
    with pytest.raises(ValueError, match="dict with 'role'"):
        ChatRequest.make(["hello"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    assert SamplingParams().temperature == 0.0  # greedy by default


def test_cache_makes_reruns_free_and_identical(tmp_path):
    path = tmp_path / "llm.sqlite"
    be = ScriptedBackend(echo, model_id="m1")
    eng = LLMEngine(be, ResponseCache(path))
    first = eng.generate([req("a"), req("b")])
    assert [c.cached for c in first] == [False, False] and len(be.calls) == 2
    # a new engine (a rerun) over the same file: no backend call, same text
    be2 = ScriptedBackend(lambda m, p: "DIFFERENT", model_id="m1")
    eng2 = LLMEngine(be2, ResponseCache(path))
    again = eng2.generate([req("b"), req("a")])
    assert [c.text for c in again] == [first[1].text, first[0].text]
    assert all(c.cached for c in again) and be2.calls == [] and eng2.stats.cache_hits == 2
    # the key covers model, messages and sampling parameters
    assert eng2.generate([req("a", seed=5)])[0].text == "DIFFERENT"
    assert LLMEngine(ScriptedBackend(echo, model_id="m2"), ResponseCache(path)).generate([req("a")])[0].cached is False
    assert eng2.generate([req("a", max_tokens=7)])[0].cached is False
    # stored as plain SQLite rows with the request in JSON (no pickle)
    rows = sqlite3.connect(path).execute("SELECT model, request, text FROM responses").fetchall()
    assert {r[0] for r in rows} == {"m1", "m2"}
    assert all(json.loads(r[1])["messages"] for r in rows)


def test_identical_requests_are_sent_once():
    be = ScriptedBackend(echo)
    eng = LLMEngine(be, None)
    out = eng.generate([req("x"), req("y"), req("x", tag=3)])
    assert len(be.calls) == 2
    assert out[0].text == out[2].text and out[2].duplicate and not out[0].duplicate
    assert eng.stats.requests == 3 and eng.stats.unique == 2


def test_failing_request_is_retried_with_new_seeds_then_counted():
    seen = []

    def flaky(messages, params):
        seen.append((messages[-1]["content"], params.seed))
        if messages[-1]["content"] == "bad":
            raise TimeoutError("read timed out")
        if messages[-1]["content"] == "once" and params.seed == 10:
            raise ConnectionError("reset")
        return "ok"

    be = ScriptedBackend(flaky)
    eng = LLMEngine(be, None, max_attempts=3)
    out = eng.generate([req("good", seed=10), req("once", seed=10), req("bad", seed=10)])
    assert out[0].ok and out[0].attempts == 1
    assert out[1].ok and out[1].attempts == 2 and out[1].seed_used == 11
    assert not out[2].ok and out[2].text == "" and out[2].finish_reason == "error" and "TimeoutError" in out[2].error
    assert [s for t, s in seen if t == "bad"] == [10, 11, 12]  # bounded, and each retry changes the seed
    assert eng.stats.failures == 1 and eng.stats.errors == {"TimeoutError": 3, "ConnectionError": 1}


def test_failures_are_not_cached(tmp_path):
    calls = {"n": 0}

    def down_then_up(messages, params):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("down")
        return "up"

    path = tmp_path / "c.sqlite"
    out = LLMEngine(ScriptedBackend(down_then_up), ResponseCache(path), max_attempts=2).generate([req("q")])
    assert not out[0].ok
    out = LLMEngine(ScriptedBackend(down_then_up), ResponseCache(path), max_attempts=2).generate([req("q")])
    assert out[0].ok and out[0].text == "up" and not out[0].cached


def test_a_batch_that_raises_is_retried_request_by_request():
    be = ScriptedBackend(echo, fail_batches=1)
    eng = LLMEngine(be, None, max_attempts=2)
    out = eng.generate([req("a"), req("b"), req("c")])
    assert all(c.ok for c in out) and [c.attempts for c in out] == [2, 2, 2]
    assert be.batches == 4  # one failed batch, then one call per request
    assert eng.stats.errors == {"ConnectionError": 3}


def test_token_and_time_accounting():
    def slow(messages, params):
        time.sleep(0.01)
        return "one two three"

    eng = LLMEngine(ScriptedBackend(slow), None)
    out = eng.generate([req("a b"), req("c d e f")])
    assert [c.prompt_tokens for c in out] == [2, 4] and [c.completion_tokens for c in out] == [3, 3]
    assert eng.stats.prompt_tokens == 6 and eng.stats.completion_tokens == 6
    assert eng.stats.seconds >= 0.02
    # the batch's time is shared in proportion to tokens and adds up
    assert out[0].seconds < out[1].seconds
    assert abs(sum(c.seconds for c in out) - eng.stats.seconds) < 1e-9


def test_lazy_backend_loads_only_on_a_cache_miss(tmp_path):
    built = []

    def factory():
        built.append(1)
        return ScriptedBackend(echo, model_id="lazy-m")

    be = LazyBackend("scripted", "lazy-m", factory, {})
    eng = LLMEngine(be, ResponseCache(tmp_path / "c.sqlite"))
    eng.generate([req("a")])
    assert built == [1] and be.loaded
    be.close()
    assert not be.loaded
    eng.generate([req("a")])  # cached: nothing is loaded
    assert built == [1] and not be.loaded
    eng.generate([req("new")])
    assert built == [1, 1]


def test_make_engine_errors_are_clear():
    with pytest.raises(BenchError, match="unknown LLM backend 'vlm'"):
        make_engine("vlm", "x", cache=False)
    with pytest.raises(BenchError, match="unknown script"):
        make_engine("scripted", "nope", cache=False)
    with pytest.raises(BenchError, match="base_url must start with http"):
        make_backend("openai", "m", lazy=False, base_url="localhost:8000")


# ---------------------------------------------------------------------------- OpenAI-compatible HTTP


class _Handler(BaseHTTPRequestHandler):
    mode: dict = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)  # type: ignore[attr-defined]
        last = body["messages"][-1]["content"]
        if last == "slow":
            time.sleep(1.0)
        if last == "boom" or (last == "flaky" and body["seed"] == 3):
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        if last == "garbled":
            payload = b"{not json"
        else:
            payload = json.dumps(
                {
                    "choices": [{"message": {"content": f"answer to {last} (seed {body['seed']}, t={body['temperature']})"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 5},
                }
            ).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout case)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.bodies = []  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_backend_against_a_local_server(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    eng = make_engine("openai", "served-model", cache=tmp_path / "c.sqlite", max_attempts=2, base_url=url, timeout_s=0.3, workers=4)
    out = eng.generate([req("hello", seed=3), req("flaky", seed=3), req("boom"), req("garbled"), req("slow")])
    assert out[0].text == "answer to hello (seed 3, t=0.0)" and out[0].prompt_tokens == 11 and out[0].completion_tokens == 5
    assert out[1].ok and out[1].seed_used == 4 and "seed 4" in out[1].text  # HTTP 500 → retried with a new seed
    assert not out[2].ok and "HTTP 500" in out[2].error
    assert not out[3].ok and "malformed" in out[3].error
    assert not out[4].ok  # socket timeout, twice
    assert eng.stats.failures == 3
    sent = server.bodies[0]
    assert sent["model"] == "served-model" and sent["max_tokens"] == 512 and sent["messages"][-1]["role"] == "user"
    n = len(server.bodies)
    assert eng.generate([req("hello", seed=3)])[0].cached and len(server.bodies) == n


# ---------------------------------------------------------------------------- vLLM (adapter logic with a stand-in)


def _fake_vllm(monkeypatch, window=64):
    class SP:
        def __init__(self, **kw):
            self.kw = kw

    mod = types.ModuleType("vllm")
    mod.SamplingParams = SP
    monkeypatch.setitem(sys.modules, "vllm", mod)

    class Tok:
        def apply_chat_template(self, msgs, add_generation_prompt=True, tokenize=True):
            return list(range(sum(len(m["content"].split()) for m in msgs) + 3))

    class LLM:
        llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=window))

        def __init__(self):
            self.seen = []

        def get_tokenizer(self):
            return Tok()

        def chat(self, messages, sampling_params, use_tqdm):
            self.seen.append((messages, [p.kw for p in sampling_params]))
            out = []
            for m, p in zip(messages, sampling_params):
                o = types.SimpleNamespace(text=f"re {m[-1]['content']}", token_ids=[1, 2], finish_reason="stop")
                out.append(types.SimpleNamespace(outputs=[o], prompt_token_ids=[0] * 7))
            return out

    return LLM()


def test_vllm_backend_maps_requests_and_skips_prompts_too_long(monkeypatch):
    from bench.llm.vllm_backend import PromptTooLong, VLLMBackend

    llm = _fake_vllm(monkeypatch, window=20)
    be = VLLMBackend("some/model", llm=llm)
    eng = LLMEngine(be, None, max_attempts=1)
    out = eng.generate([req("short", seed=4, temperature=0.5, max_tokens=9, stop=("\n\n",)), req("word " * 30)])
    assert out[0].text == "re short" and out[0].prompt_tokens == 7 and out[0].completion_tokens == 2
    assert not out[1].ok and PromptTooLong.__name__ in out[1].error
    msgs, params = llm.seen[0]
    assert len(msgs) == 1  # the long prompt was never sent
    assert params[0] == {"temperature": 0.5, "top_p": 1.0, "max_tokens": 9, "seed": 4, "stop": ["\n\n"]}
    assert be.model_id == "vllm:some/model"


def test_vllm_backend_without_vllm_names_the_fix(monkeypatch):
    import importlib.util

    from bench.llm.vllm_backend import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BenchError, match="needs the 'vllm' package"):
        VLLMBackend("m")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(BenchError, match="needs the 'vllm' package"):
        make_engine("vllm", "m", cache=False)  # lazy, yet it fails at once


@pytest.mark.gpu
def test_vllm_backend_on_a_gpu(tmp_path):
    pytest.importorskip("vllm")
    model = __import__("os").environ.get("BENCH_VLLM_TEST_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
    eng = make_engine("vllm", model, cache=tmp_path / "c.sqlite", lazy=False, max_model_len=2048, gpu_memory_utilization=0.3)
    reqs = [req(f"Say the word {w}.", max_tokens=8) for w in ("apple", "river", "stone")]
    out = eng.generate(reqs)
    assert all(c.ok and c.completion_tokens > 0 for c in out)
    again = eng.generate(reqs)
    assert [c.text for c in again] == [c.text for c in out] and all(c.cached for c in again)


# ---------------------------------------------------------------------------- transformers (real tiny model)


@pytest.mark.slow
def test_transformers_backend_with_smollm2(tmp_path):
    pytest.importorskip("transformers")
    from bench.llm.models import smollm2_gguf

    try:
        smollm2_gguf()
    except BenchError as e:
        pytest.skip(str(e))
    eng = make_engine("transformers", "smollm2-135m-instruct", cache=tmp_path / "c.sqlite", batch_size=4, threads=1)
    reqs = [req("What is 2 + 2? Answer with a number.", max_tokens=6), req("Name a colour.", max_tokens=6, temperature=0.8, seed=1)]
    out = eng.generate(reqs)
    assert all(c.ok for c in out) and all(0 < c.completion_tokens <= 6 for c in out)
    assert all(c.finish_reason in ("stop", "length") for c in out)
    assert eng.model_id == "transformers:SmolLM2-135M-Instruct.Q4_1.gguf:float32"
    assert [c.text for c in eng.generate(reqs)] == [c.text for c in out]


def _write_answers(path, start, n):
    from bench.llm import ChatRequest, make_engine

    eng = make_engine("scripted", "hash", cache=path, batch_size=7)
    reqs = [ChatRequest.make([{"role": "user", "content": f"q{i}"}]) for i in range(start, start + n)]
    return [c.text for c in eng.generate(reqs)]


def test_response_cache_is_consistent_under_concurrent_writers(tmp_path):
    """Several processes (e.g. Ray tasks of one run) share one SQLite cache: overlapping
    requests, no lock errors, every answer stored once and equal to a single writer's."""
    import multiprocessing as mp

    from bench.llm import ResponseCache

    path = tmp_path / "shared.sqlite"
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        outs = pool.starmap(_write_answers, [(path, 0, 60), (path, 30, 60), (path, 15, 60)])
    alone = _write_answers(tmp_path / "alone.sqlite", 0, 90)
    assert outs[0] == alone[:60] and outs[1] == alone[30:90] and outs[2] == alone[15:75]
    c = ResponseCache(path)
    assert len(c) == 90
    c.close()
