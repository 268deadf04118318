"""vLLM offline inference (``vllm.LLM``): one batched ``chat`` call per engine batch.

vLLM is imported when the backend is built, never at module import. Every request keeps its own
``SamplingParams`` (temperature, top_p, max_tokens, seed, stop), so a batch may mix first tries and
reseeded retries. A prompt longer than the model's window would make vLLM reject the whole batch;
such requests are answered with an error in their slot and the rest of the batch runs.
"""

from __future__ import annotations

import time
from typing import Any

from bench.llm.base import Backend, ChatRequest, Completion


class PromptTooLong(ValueError):
    pass


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        enforce_eager: bool | None = None,  # None: eager on vLLM's CPU build, CUDA graphs on a GPU
        trust_remote_code: bool = False,
        llm: Any = None,
    ):
        self.model = model
        self.model_id = f"vllm:{model}"
        self._settings = {
            "dtype": dtype,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "seed": seed,
            "enforce_eager": enforce_eager,
            "trust_remote_code": bool(trust_remote_code),  # code shipped with a checkpoint runs only when asked
        }
        if llm is None:
            try:
                import vllm
            except ImportError:
                from bench.errors import BenchError

                raise BenchError(
                    "the vLLM backend needs the 'vllm' package (and a CUDA GPU)",
                    hint="pip install 'bench-prm[vllm]', or use backend=transformers (CPU) or backend=openai (a server)",
                ) from None
            from bench.llm.models import resolve_model
            from bench.llm.vllm_compat import engine_defaults, installed_api

            api = installed_api()
            skip = ("trust_remote_code", "enforce_eager", "gpu_memory_utilization")
            kwargs = {k: v for k, v in self._settings.items() if v is not None and k not in skip}
            kwargs.update(engine_defaults(api, enforce_eager, gpu_memory_utilization))
            path = resolve_model(model)[0]  # an alias (smollm2-135m-instruct) → its local copy
            llm = vllm.LLM(model=path, trust_remote_code=self._settings["trust_remote_code"], **kwargs)
        self.llm = llm
        self._tok = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_id": self.model_id, **self._settings}

    def _window(self) -> int | None:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:
            return None

    def _prompt_len(self, req: ChatRequest) -> int | None:
        try:
            if self._tok is None:
                self._tok = self.llm.get_tokenizer()
            ids = self._tok.apply_chat_template(req.chat(), add_generation_prompt=True, tokenize=True)
            return len(ids)
        except Exception:
            return None

    def generate(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        from vllm import SamplingParams as VSP

        window = self._window()
        out: list[Completion | BaseException | None] = [None] * len(requests)
        send = []
        for i, r in enumerate(requests):
            n = self._prompt_len(r) if window else None
            if window and n is not None and n + 1 > window:
                out[i] = PromptTooLong(f"prompt of {n} tokens does not fit the {window}-token window")
            else:
                send.append(i)
        if send:
            params = [
                VSP(
                    temperature=requests[i].params.temperature,
                    top_p=requests[i].params.top_p,
                    max_tokens=requests[i].params.max_tokens,
                    seed=requests[i].params.seed,
                    stop=list(requests[i].params.stop) or None,
                )
                for i in send
            ]
            t0 = time.perf_counter()
            results = self.llm.chat([requests[i].chat() for i in send], sampling_params=params, use_tqdm=False)
            wall = time.perf_counter() - t0
            for i, res in zip(send, results):
                o = res.outputs[0]
                reason = o.finish_reason or "stop"
                out[i] = Completion(
                    text=o.text,
                    prompt_tokens=len(res.prompt_token_ids or []),
                    completion_tokens=len(o.token_ids or []),
                    seconds=wall / len(send),
                    finish_reason="length" if reason == "length" else "stop",
                )
        return [c for c in out]  # type: ignore[misc]

    def close(self) -> None:
        """Best effort: vLLM does not always return all GPU memory in-process."""
        llm, self.llm = self.llm, None
        try:  # stop the engine's worker processes now, not at interpreter exit
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        except Exception:  # noqa: BLE001 - best effort
            pass
        del llm
        try:
            from vllm.distributed.parallel_state import destroy_model_parallel

            destroy_model_parallel()
        except Exception:
            pass
