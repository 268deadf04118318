"""transformers generation: the CPU fallback (and a GPU path without vLLM).

Chats are rendered with the tokenizer's chat template, left-padded and generated in batches of
``batch_size`` requests of similar length that share sampling parameters. Greedy decoding at
temperature 0; otherwise sampling seeded with ``torch.manual_seed(seed)`` per batch (a batch's
draws then depend on its composition — the engine's cache makes reruns identical anyway).
Stop strings cut the decoded text. A prompt that leaves no room in the model's window for the
answer is returned as an error in its slot. (Dynamic int8 quantisation of the linear layers was
tried for speed and dropped: it made SmolLM2-135M's answers incoherent.)
"""

from __future__ import annotations

import time
from typing import Any

from bench.llm.base import Backend, ChatRequest, Completion
from bench.llm.models import remote_code_guard, resolve_model


class HFBackend(Backend):
    name = "transformers"

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 8,
        threads: int | None = None,
        trust_remote_code: bool = False,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(int(threads))
        path, identity = resolve_model(model)
        self.model_name = model
        self.device = device
        self.batch_size = max(1, int(batch_size))
        torch_dtype = {"auto": torch.float32 if device == "cpu" else torch.bfloat16, "float32": torch.float32,
                       "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if torch_dtype is None:
            from bench.errors import BenchError

            raise BenchError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
        self.dtype = str(torch_dtype).replace("torch.", "")
        self.model_id = f"transformers:{identity}:{self.dtype}"
        # code shipped with a checkpoint runs only when asked (the method's trust_remote_code parameter)
        self.trust_remote_code = bool(trust_remote_code)
        hint = "set the method's parameter trust_remote_code=true (e.g. --param synthesizeme.trust_remote_code=true)"
        with remote_code_guard(model, hint):
            self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=self.trust_remote_code)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = self.model.to(device).eval()
        self.window = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [self.tok.eos_token_id])

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_id": self.model_id, "device": self.device, "dtype": self.dtype, "batch_size": self.batch_size,
                "trust_remote_code": self.trust_remote_code}

    def render(self, req: ChatRequest) -> str:
        return self.tok.apply_chat_template(req.chat(), add_generation_prompt=True, tokenize=False)

    def generate(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        import torch

        out: list[Completion | BaseException | None] = [None] * len(requests)
        texts = [self.render(r) for r in requests]
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            p = r.params
            if len(ids[i]) + p.max_tokens > self.window:
                out[i] = ValueError(f"prompt of {len(ids[i])} tokens + {p.max_tokens} new tokens exceeds the {self.window}-token window")
                continue
            key = (p.temperature, p.top_p, p.max_tokens, p.seed if p.temperature > 0 else 0)
            groups.setdefault(key, []).append(i)
        for (temp, top_p, max_tokens, seed), members in groups.items():
            members.sort(key=lambda i: len(ids[i]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                width = max(len(ids[i]) for i in chunk)
                pad = self.tok.pad_token_id
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
                    mask[row, width - len(ids[i]) :] = 1
                kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": pad}
                if temp > 0:
                    torch.manual_seed(seed)
                    kwargs.update(do_sample=True, temperature=temp, top_p=top_p)
                else:
                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    gen = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
                wall = time.perf_counter() - t0
                new = gen[:, width:].tolist()
                for row, i in enumerate(chunk):
                    toks = new[row]
                    n = len(toks)
                    reason = "length"
                    for j, t in enumerate(toks):
                        if t in self.eos_ids:
                            n, reason = j, "stop"
                            break
                    text = self.tok.decode(toks[:n], skip_special_tokens=True)
                    for s in requests[i].params.stop:
                        cut = text.find(s)
                        if cut >= 0:
                            text, reason = text[:cut], "stop"
                    out[i] = Completion(text, len(ids[i]), n, wall / len(chunk), reason)
        return [c for c in out]  # type: ignore[misc]
