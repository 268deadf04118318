"""Several engines serving one run: a pool of Ray actors, each holding one backend.

``RayPoolBackend`` is a :class:`~bench.llm.base.Backend` like any other: the
:class:`~bench.llm.engine.LLMEngine` in front of it still deduplicates, caches (SQLite, in the
process that runs the method) and retries. Each ``generate`` call splits its batch into
contiguous slices, one per replica, sends them concurrently and puts the answers back in request
order, so a SynthesizeMe stage (all users' requests at once) is served by every replica at once.

Replicas are *named* Ray actors (``bench-llm-<hash>-<i>``, detached, in the executor's namespace),
so every cell of a run that asks for the same model shares the same replicas instead of loading
the model again; :class:`bench.executors.RayExecutor` kills them when the run ends. Each replica
asks Ray for one GPU (``tensor_parallel_size`` GPUs for vLLM) when its backend needs one, else
``threads`` CPUs. The ``model_id`` is the single backend's, so cached answers are shared between
pooled and unpooled runs and the answers themselves are identical (greedy decoding per request).
"""

from __future__ import annotations

from typing import Any

from bench.hashing import hash_obj
from bench.llm.base import Backend, ChatRequest, Completion


class _Replica:
    """The actor body: builds its backend on first use (the model loads inside the actor)."""

    def __init__(self, backend: str, model: str, device: str, threads: int | None, options: dict[str, Any]):
        self.args = (backend, model, device, threads, options)
        self.be: Backend | None = None

    def generate(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        if self.be is None:
            from bench.llm import make_backend

            backend, model, device, threads, options = self.args
            self.be = make_backend(backend, model, device=device, threads=threads, lazy=False, **options)
        out = self.be.generate(requests)
        # exceptions travel back as values; keep them picklable
        return [c if isinstance(c, Completion) else RuntimeError(f"{type(c).__name__}: {c}") for c in out]

    def describe(self) -> dict[str, Any]:
        return {} if self.be is None else self.be.describe()

    def pid(self) -> int:
        import os

        return os.getpid()


def replica_resources(backend: str, device: str, threads: int | None, options: dict[str, Any]) -> dict[str, float]:
    if backend == "vllm":
        from bench.llm.vllm_compat import runs_on_cpu

        if runs_on_cpu():  # vLLM's CPU build: the replica's threads are its resources
            return {"num_cpus": float(threads or 1)}
        return {"num_gpus": float(options.get("tensor_parallel_size", 1)), "num_cpus": 1.0}
    if backend == "transformers" and str(device).startswith("cuda"):
        return {"num_gpus": 1.0, "num_cpus": 1.0}
    return {"num_cpus": float(threads or 1)}


class RayPoolBackend(Backend):
    def __init__(
        self,
        backend: str,
        model: str,
        model_id: str,
        replicas: int,
        device: str = "cpu",
        threads: int | None = None,
        **options: Any,
    ):
        from bench.executors import require_ray

        if replicas < 1:
            raise ValueError(f"replicas must be ≥ 1, got {replicas}")
        self.ray = require_ray()
        if not self.ray.is_initialized():
            self.ray.init(include_dashboard=False, namespace="bench")
        self.name = backend
        self.model_id = model_id
        self.replicas = int(replicas)
        self._spec = (backend, model, device, threads, dict(options))
        self._tag = hash_obj({"model_id": model_id, "device": device, "threads": threads, "options": options}, size=6)
        self._res = replica_resources(backend, device, threads, options)
        self._actors: list[Any] = []

    def _actor(self, i: int, fresh: bool = False):
        ray = self.ray
        if not self._actors:
            self._actors = [None] * self.replicas
        if self._actors[i] is None or fresh:
            cls = ray.remote(_Replica)
            self._actors[i] = cls.options(
                name=f"bench-llm-{self._tag}-{i}", get_if_exists=True, lifetime="detached", max_restarts=1, **self._res
            ).remote(*self._spec)
        return self._actors[i]

    def generate(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        ray = self.ray
        n = len(requests)
        k = min(self.replicas, n)
        if k == 0:
            return []
        bounds = [round(j * n / k) for j in range(k + 1)]
        refs = [self._actor(j).generate.remote(requests[bounds[j] : bounds[j + 1]]) for j in range(k)]
        out: list[Completion | BaseException] = []
        for j, ref in enumerate(refs):
            size = bounds[j + 1] - bounds[j]
            try:
                part = ray.get(ref)
            except ray.exceptions.RayError as e:  # the replica died: its requests fail (the engine retries them)
                self._actor(j, fresh=True)
                part = [RuntimeError(f"engine replica {j} failed: {type(e).__name__}")] * size
            out.extend(part)
        return out

    def describe(self) -> dict[str, Any]:
        backend, model, device, threads, options = self._spec
        return {"backend": backend, "model_id": self.model_id, "replicas": self.replicas, "pool": "ray", **options}

    def pids(self) -> list[int]:
        """The process ids of the replicas (tests)."""
        return self.ray.get([self._actor(i).pid.remote() for i in range(self.replicas)])

    def close(self) -> None:
        """Free the replicas (their GPU memory); the next request starts them again."""
        for a in self._actors:
            if a is not None:
                try:
                    self.ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self._actors = []
