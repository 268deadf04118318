"""Any OpenAI-compatible chat server (``vllm serve``, llama.cpp's server, a hosted API).

Plain HTTP through the standard library (no client package needed): ``POST {base_url}/chat/completions``
with ``model``, ``messages``, ``temperature``, ``top_p``, ``max_tokens``, ``seed`` and ``stop``.
Requests of a batch run concurrently on ``workers`` threads; each has its own socket timeout, and
a failing request (HTTP error, timeout, malformed body) is returned as an exception in its slot so
the engine retries it alone. The API key, if any, is read from the environment variable named by
``api_key_env`` (never stored in results).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.llm.base import Backend, ChatRequest, Completion


class ServerError(RuntimeError):
    pass


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str = "http://localhost:8000/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        workers: int = 8,
    ):
        if not base_url.startswith(("http://", "https://")):
            from bench.errors import BenchError

            raise BenchError(f"base_url must start with http:// or https://, got {base_url!r}", hint="e.g. http://localhost:8000/v1")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.workers = max(1, int(workers))
        self.model_id = f"openai:{model}"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_id": self.model_id, "base_url": self.base_url, "timeout_s": self.timeout_s}

    def _one(self, req: ChatRequest) -> Completion | BaseException:
        p = req.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.chat(),
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            "seed": p.seed,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        http = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(http, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
            return ServerError(f"HTTP {e.code} from {self.base_url}: {detail}")
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            return e if isinstance(e, Exception) else ServerError(str(e))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return ServerError(f"malformed response body: {e}")
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] or ""
            usage = payload.get("usage") or {}
            return Completion(
                text=str(text),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                seconds=time.perf_counter() - t0,
                finish_reason=str(choice.get("finish_reason") or "stop"),
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            return ServerError(f"unexpected response shape ({type(e).__name__}: {e})")

    def generate(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        if len(requests) == 1 or self.workers == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(min(self.workers, len(requests))) as pool:
            return list(pool.map(self._one, requests))
