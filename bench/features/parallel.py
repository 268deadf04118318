"""Data-parallel feature extraction: several copies of the model split one dataset's texts.

``bench embed --data-parallel N`` starts N workers — local processes, each seeing its own GPU(s)
through ``CUDA_VISIBLE_DEVICES``, or with ``--executor ray`` / ``--ray-address`` N Ray tasks that
each ask for ``--tensor-parallel`` GPUs. Every worker loads the model and runs the ordinary
extraction loop (:func:`bench.features.extract.extract_features`); chunks are claimed one at a
time, so the workers split the dataset dynamically (a slow or dead worker's chunks go to the
others) and write into the same resumable cache; one of them assembles the final arrays. The
result is the same file an unsharded run writes: a chunk's content does not depend on who embeds
it (the same texts, the same batches).

With ``--tensor-parallel T`` (vLLM) each worker's model is split over T GPUs — for models that do
not fit one GPU; N workers then use N × T GPUs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import BenchError


def _worker(spec: str, model: dict[str, Any], kinds: list[str], extract: dict[str, Any], threads: int | None) -> list[dict[str, Any]]:
    """One data-parallel worker: load the dataset and the model, embed what is left (each kind)."""
    from bench.datasets import load_text_dataset
    from bench.executors import pin_threads
    from bench.features.encoders import load_encoder
    from bench.features.extract import default_reference, extract_features

    if threads:
        import torch

        torch.set_num_threads(int(threads))
        pin_threads(threads)
    ds = load_text_dataset(spec)
    enc = load_encoder(model["name"], **{k: v for k, v in model.items() if k != "name"})
    ref = default_reference(enc, model["name"], model.get("revision"))
    reports = []
    try:
        for kind in kinds:
            rep = extract_features(ds, enc, kind=kind, reference=ref, log=lambda m: None, **extract)
            rep["worker"] = f"{os.uname().nodename}:{os.getpid()}"
            reports.append(rep)
    finally:
        enc.close()
    return reports


def gpu_groups(n_workers: int, tensor_parallel: int, visible: list[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each local worker: disjoint groups of ``tensor_parallel`` GPUs."""
    if not visible:
        return [None] * n_workers
    need = n_workers * tensor_parallel
    if need > len(visible):
        raise BenchError(
            f"--data-parallel {n_workers} × --tensor-parallel {tensor_parallel} needs {need} GPUs; {len(visible)} are visible",
            hint="lower --data-parallel, or run on a Ray cluster with --ray-address",
        )
    return [",".join(visible[i * tensor_parallel : (i + 1) * tensor_parallel]) for i in range(n_workers)]


def cpu_binds(n_workers: int, threads: int | None) -> list[str | None]:
    """``VLLM_CPU_OMP_THREADS_BIND`` of each local worker on vLLM's CPU build: disjoint cores
    (``threads`` each), so the engines do not all bind to the same core; None (vLLM's automatic
    binding) when the cores do not divide, or when the variable is already set."""
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return [None] * n_workers
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return [None] * n_workers
    per = int(threads or max(1, len(cpus) // n_workers))
    if per < 1 or n_workers * per > len(cpus):
        return [None] * n_workers
    return [",".join(str(c) for c in cpus[i * per : (i + 1) * per]) for i in range(n_workers)]


def visible_gpus(device: str) -> list[str]:
    if not str(device).startswith("cuda"):
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def partial_progress(root: Path, kind: str) -> tuple[int, int] | None:
    """(chunks written, chunks) of a running extraction, read from its partial directory."""
    import json

    d = root / f"partial-{kind}"
    try:
        plan = json.loads((d / "plan.json").read_text())
    except (OSError, ValueError):
        return None
    n = (plan["n_items"] + plan["chunk_size"] - 1) // plan["chunk_size"]
    return len(list(d.glob("chunk-*.parquet"))), n


def extract_parallel(
    spec: str,
    model: dict[str, Any],
    kinds: list[str],
    workers: int,
    extract: dict[str, Any],
    executor: str = "local",
    ray_address: str | None = None,
    tensor_parallel: int = 1,
    threads: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    root: Path | None = None,
    poll_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Run ``workers`` extraction workers on one dataset and model; their reports (per worker, per kind)."""
    if workers < 1:
        raise BenchError(f"--data-parallel must be ≥ 1, got {workers}")
    device = model.get("device") or "cpu"
    if executor == "ray" or ray_address:
        return _on_ray(spec, model, kinds, workers, extract, ray_address, tensor_parallel, threads, device)
    groups = gpu_groups(workers, tensor_parallel, visible_gpus(device))
    binds: list[str | None] = [None] * workers
    if model.get("backend") == "vllm":
        from bench.llm.vllm_compat import runs_on_cpu

        if runs_on_cpu():
            binds = cpu_binds(workers, threads)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from bench.executors import thread_env

    ctx = mp.get_context("spawn")
    pools, futures = [], []
    try:
        for i in range(workers):
            extra = {"CUDA_VISIBLE_DEVICES": groups[i]} if groups[i] is not None else {}
            if binds[i] is not None:
                extra["VLLM_CPU_OMP_THREADS_BIND"] = binds[i]
            wmodel = dict(model, device="cuda") if groups[i] is not None and device.startswith("cuda") else model
            with thread_env(threads, extra):  # a worker's environment is fixed when it starts
                pool = ProcessPoolExecutor(1, mp_context=ctx)
                futures.append(pool.submit(_worker, spec, wmodel, kinds, extract, threads))
            pools.append(pool)
        while not all(f.done() for f in futures):
            time.sleep(poll_s)
            if progress and root is not None:
                for kind in kinds:
                    got = partial_progress(Path(root), kind)
                    if got:
                        progress(kind, *got)
        return [r for f in futures for r in f.result()]
    finally:
        for p in pools:
            p.shutdown(wait=True, cancel_futures=True)


def _on_ray(spec, model, kinds, workers, extract, ray_address, tensor_parallel, threads, device):
    from bench.executors import require_ray, worker_env

    ray = require_ray()
    env = worker_env()
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "namespace": "bench", "runtime_env": {"env_vars": env}}
        if ray_address:
            kw["address"] = ray_address
        ray.init(**kw)
        started = True
    from bench.llm.vllm_compat import runs_on_cpu

    gpu = str(device).startswith("cuda") or (model.get("backend") == "vllm" and not runs_on_cpu())
    opts: dict[str, Any] = {"num_cpus": float(threads or 1), "max_retries": 1, "runtime_env": {"env_vars": env}}
    if gpu:
        opts["num_gpus"] = float(tensor_parallel)
        model = dict(model, device="cuda") if model.get("backend") != "vllm" else model
    task = ray.remote(_worker).options(**opts)
    try:
        refs = [task.remote(spec, model, kinds, extract, threads) for _ in range(workers)]
        return [r for part in ray.get(refs) for r in part]
    finally:
        if started:
            ray.shutdown()
