"""The engine every LLM method talks to: cache, deduplication, bounded retries, accounting.

``LLMEngine.generate(requests)`` returns one :class:`Completion` per request, in order, and never
raises for a failing request: after ``max_attempts`` tries the completion carries ``error`` and an
empty text, and the caller decides what an unanswered request means (for a judge: a wrong answer).

* Identical requests in one call are sent once (the repeats come back with ``duplicate=True``).
* A cached answer is returned without calling the backend (``cached=True``, zero seconds).
* A backend that raises for a whole batch gets each request of the batch retried on its own; a
  request that fails is retried with a different sampling seed (``seed + attempt``) — retrying
  the same greedy request would only repeat the failure. The answer is cached under the request
  as asked, and ``seed_used`` records which seed produced it.
* Time is measured per backend call and shared among the batch's requests in proportion to
  their tokens; tokens come from the backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.llm.base import Backend, ChatRequest, Completion
from bench.llm.cache import ResponseCache, cache_key, request_json


@dataclass
class EngineStats:
    requests: int = 0  # requests asked of the engine (after nothing: duplicates included)
    unique: int = 0  # distinct requests among them
    cache_hits: int = 0
    backend_calls: int = 0  # attempts sent to the backend (retries included)
    retries: int = 0
    failures: int = 0  # requests still unanswered after every attempt
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LLMEngine:
    def __init__(
        self,
        backend: Backend,
        cache: ResponseCache | None = None,
        max_attempts: int = 3,
        batch_size: int = 256,
        log: Callable[[str], None] | None = None,
    ):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be ≥ 1, got {max_attempts}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.backend = backend
        self.cache = cache
        self.max_attempts = int(max_attempts)
        self.batch_size = int(batch_size)
        self.log = log
        self.stats = EngineStats()

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def describe(self) -> dict[str, Any]:
        return {
            **self.backend.describe(),
            "cache": None if self.cache is None else str(self.cache.path),
            "max_attempts": self.max_attempts,
            "batch_size": self.batch_size,
        }

    # ------------------------------------------------------------------ public
    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        n = len(requests)
        self.stats.requests += n
        if n == 0:
            return []
        keys = [cache_key(self.model_id, r) for r in requests]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        self.stats.unique += len(first)
        done: dict[str, Completion] = {}
        if self.cache is not None:
            done.update(self.cache.get_many(list(first)))
            self.stats.cache_hits += len(done)
        todo = [k for k in first if k not in done]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            batch = [requests[first[k]] for k in chunk]
            answers = self._run(batch)
            if self.cache is not None:
                self.cache.put_many(
                    [(k, self.model_id, request_json(self.model_id, r), c) for k, r, c in zip(chunk, batch, answers)]
                )
            done.update(zip(chunk, answers))
        out = []
        seen: set[str] = set()
        for k in keys:
            c = done[k]
            if k in seen:
                # a duplicate in this call: same answer, no extra cost
                c = Completion(c.text, c.prompt_tokens, c.completion_tokens, 0.0, c.finish_reason, False, 0, c.seed_used, c.error, duplicate=True)
            seen.add(k)
            out.append(c)
        return out

    # ------------------------------------------------------------------ internals
    def _call(self, batch: list[ChatRequest]) -> list[Completion | BaseException]:
        self.stats.backend_calls += len(batch)
        t0 = time.perf_counter()
        try:
            res = self.backend.generate(batch)
            if len(res) != len(batch):
                raise RuntimeError(f"backend returned {len(res)} answers for {len(batch)} requests")
        except Exception as e:  # the whole batch failed
            res = [e] * len(batch)
        wall = time.perf_counter() - t0
        self.stats.seconds += wall
        # share the wall time by tokens among the answered requests
        weights = [(c.prompt_tokens + c.completion_tokens) if isinstance(c, Completion) else 0 for c in res]
        total = sum(weights)
        for c, w in zip(res, weights):
            if isinstance(c, Completion):
                c.seconds = wall * (w / total if total else 1.0 / len(res))
                self.stats.prompt_tokens += c.prompt_tokens
                self.stats.completion_tokens += c.completion_tokens
        return res

    def _note_error(self, e: BaseException) -> str:
        name = type(e).__name__
        self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
        return f"{name}: {e}"

    def _run(self, batch: list[ChatRequest]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(batch)
        errors: list[str] = [""] * len(batch)
        res = self._call(batch)
        pending = []
        for i, c in enumerate(res):
            if isinstance(c, Completion):
                c.attempts, c.seed_used = 1, batch[i].params.seed
                out[i] = c
            else:
                errors[i] = self._note_error(c)
                pending.append(i)
        for attempt in range(1, self.max_attempts):
            if not pending:
                break
            self.stats.retries += len(pending)
            retry = [batch[i].with_params(batch[i].params.with_seed(batch[i].params.seed + attempt)) for i in pending]
            # one request at a time: a request that breaks a batch must not sink its neighbours
            still = []
            for i, req in zip(pending, retry):
                c = self._call([req])[0]
                if isinstance(c, Completion):
                    c.attempts, c.seed_used = attempt + 1, req.params.seed
                    out[i] = c
                else:
                    errors[i] = self._note_error(c)
                    still.append(i)
            pending = still
        for i in pending:
            self.stats.failures += 1
            if self.log:
                self.log(f"[llm] request failed after {self.max_attempts} attempts: {errors[i]}")
            out[i] = Completion("", 0, 0, 0.0, "error", attempts=self.max_attempts, error=errors[i])
        return [c for c in out if c is not None]
