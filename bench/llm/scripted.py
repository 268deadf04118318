"""A scripted backend: deterministic answers computed from the request (tests and dry runs).

``ScriptedBackend(respond)`` calls ``respond(messages, params) -> str`` for every request; the
function may raise to simulate a failing request, and ``fail_batches`` makes whole batches raise.
Named scripts (``backend="scripted"``, ``model=<name>``) make a method runnable without any model:

* ``hash`` — a judge that answers First or Second from a hash of the prompt (and the seed), with
  a one-line reasoning, and a fixed persona for persona prompts. Results mean nothing; it exists
  so that the contract tests and dry runs exercise every stage in seconds.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from bench.llm.base import Backend, ChatRequest, Completion, Message, SamplingParams

Responder = Callable[[list[Message], SamplingParams], str]


def _words(text: str) -> int:
    return len(text.split())


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, respond: Responder, model_id: str = "scripted", fail_batches: int = 0, delay_s: float = 0.0):
        self.respond = respond
        self.model_id = model_id
        self.fail_batches = int(fail_batches)  # the first N batch calls raise (transient outage)
        self.delay_s = float(delay_s)
        self.calls: list[ChatRequest] = []
        self.batches = 0

    def generate(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        self.batches += 1
        if self.batches <= self.fail_batches:
            raise ConnectionError(f"scripted outage (batch {self.batches})")
        out: list[Completion | BaseException] = []
        for r in requests:
            self.calls.append(r)
            if self.delay_s:
                time.sleep(self.delay_s)
            try:
                text = self.respond(r.chat(), r.params)
            except Exception as e:  # a per-request failure
                out.append(e)
                continue
            words = text.split()
            reason = "stop"
            if len(words) > r.params.max_tokens:  # emulate the token limit on words
                text = " ".join(words[: r.params.max_tokens])
                reason = "length"
            prompt = sum(_words(c) for _, c in r.messages)
            out.append(Completion(text, prompt, _words(text), 0.0, reason))
        return out


def _digest_int(*parts: str) -> int:
    h = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def hash_judge(messages: list[Message], params: SamplingParams) -> str:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    last = messages[-1]["content"] if messages else ""
    if "persona" in system.lower() and "past judgements" in last.lower():
        n = _digest_int(last) % 3
        return f"Reasoning: the judgements point one way.\nPersona: A user with taste number {n}."
    pick = "First" if _digest_int(system, last, str(params.seed)) % 2 == 0 else "Second"
    return f"Reasoning: a guess from the prompt's hash.\nPreference: {pick}"


SCRIPTS: dict[str, Responder] = {"hash": hash_judge}


def named_script(name: str) -> ScriptedBackend:
    if name not in SCRIPTS:
        from bench.errors import did_you_mean

        raise did_you_mean(name, SCRIPTS, "script")
    return ScriptedBackend(SCRIPTS[name], model_id=f"scripted:{name}")
