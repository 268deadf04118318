"""Requests, completions and the backend interface of the LLM engine layer.

A *backend* turns a batch of chat requests into completions (vLLM offline, an OpenAI-compatible
server, transformers, or a scripted test double). It may fail as a whole (raise) or per request
(return the exception in that request's slot). Everything else — the response cache, bounded
retries that change the sampling seed, deduplication and token/time accounting — lives in
:class:`bench.llm.engine.LLMEngine`, identical for every backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of the sampler. Temperature 0 (greedy) is the default."""

    temperature: float = 0.0
    max_tokens: int = 512
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be ≥ 1, got {self.max_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    def with_seed(self, seed: int) -> "SamplingParams":
        return replace(self, seed=int(seed))


@dataclass(frozen=True)
class ChatRequest:
    """One chat to complete. ``tag`` (e.g. a user index) is for accounting only, never cached."""

    messages: tuple[tuple[str, str], ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    tag: int = -1

    @classmethod
    def make(cls, messages: list[Message], params: SamplingParams | None = None, tag: int = -1) -> "ChatRequest":
        msgs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
            if not isinstance(m["content"], str):
                raise ValueError(f"message {i} content must be a str, got {type(m['content']).__name__}")
            msgs.append((str(m["role"]), m["content"]))
        return cls(tuple(msgs), params or SamplingParams(), int(tag))

    def chat(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def with_params(self, params: SamplingParams) -> "ChatRequest":
        return replace(self, params=params)


@dataclass
class Completion:
    """A backend's answer to one request, or the record of its failure (``error`` set, ``text`` "")."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = "stop"  # "stop", "length" or "error"
    cached: bool = False
    attempts: int = 1
    seed_used: int | None = None
    error: str | None = None
    duplicate: bool = False  # the same request appeared earlier in the same engine call

    @property
    def ok(self) -> bool:
        return self.error is None


class Backend:
    """Generates completions for a batch of requests.

    ``model_id`` identifies the weights *and* the runtime (it is part of the cache key: the same
    checkpoint under vLLM and transformers may decode differently). ``generate`` returns one entry
    per request, in order: a :class:`Completion` or the exception that request raised.
    """

    name: str = "backend"
    model_id: str = ""

    def generate(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_id": self.model_id}

    def close(self) -> None:  # pragma: no cover - trivial
        pass
