"""SynthesizeMe-FT: a Bradley–Terry reward model conditioned on each user's SynthesizeMe persona.

Not in the official repository; the MRM paper reports "SynthesizeMe (FT)" on a Llama-3.1-8B-
Instruct backbone. The harness defines it as follows (card: ``ft.md``):

1. ``fit``: the SynthesizeMe persona stages (bootstrap, persona search, persona) run for every
   seen user on that user's train pairs (within the budget);
2. a reward model — a transformer backbone, the hidden state of the last real token, a linear
   head — is fine-tuned with the BT loss −log σ(r(chosen) − r(rejected)) on the seen users' pooled
   train pairs, each response presented as a chat whose system message is the user's persona;
   LoRA adapters on the attention projections (default) or full fine-tuning;
3. ``adapt``: personas for every user (seen and unseen) from their support pairs only;
4. ``score``: r(persona_u, prompt, a) − r(persona_u, prompt, b).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from bench.api import Context, ParamCount, Queries, UserPairs
from bench.errors import BenchError
from bench.methods.synthesizeme import _LLMMethod

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
UNKNOWN_USER = "Nothing is known about this user yet."


def persona_system(persona: str | None, max_chars: int) -> str:
    text = (persona or "").strip() or UNKNOWN_USER
    return "Persona of the user who will judge this response:\n" + text[:max_chars]


def _lora_linear_cls():
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        """y = W x + (alpha / r) · B A x, with W frozen, A ~ Kaiming-uniform, B = 0."""

        def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator):
            super().__init__()
            self.base = base
            for p in self.base.parameters():
                p.requires_grad_(False)
            self.scale = alpha / r
            dev, dt = base.weight.device, torch.float32
            a = torch.empty(r, base.in_features, dtype=dt)
            bound = 1.0 / math.sqrt(base.in_features)
            a.uniform_(-bound, bound, generator=generator)
            self.lora_a = nn.Parameter(a.to(dev))
            self.lora_b = nn.Parameter(torch.zeros(base.out_features, r, dtype=dt, device=dev))

        def forward(self, x):
            delta = (x.to(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
            return self.base(x) + (self.scale * delta).to(x.dtype)

    return LoRALinear


class SynthesizeMeFT(_LLMMethod):
    name: ClassVar[str] = "synthesizeme-ft"
    version: ClassVar[str] = "1"
    summary: ClassVar[str] = "BT reward model fine-tuned on seen users' pairs with each user's SynthesizeMe persona as system message"
    test_params: ClassVar[dict] = {
        "backend": "scripted",
        "model": "hash",
        "cache": False,
        "rm_model": "tiny-random",
        "finetune": "full",
        "epochs": 1,
        "batch_size": 4,
        "max_length": 160,
        "lr": 1e-3,
    }

    def __init__(
        self,
        variant: str = "code-faithful",
        backend: str = "vllm",
        model: str = "meta-llama/Llama-3.1-8B-Instruct",
        base_url: str = "http://localhost:8000/v1",
        engine_options: dict | None = None,
        cache: bool = True,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        persona_max_tokens: int = 1024,
        retry_temperature: float = 0.7,
        max_retries: int = 3,
        max_attempts: int = 3,
        train_val_ratio: float = 0.7,
        num_candidates: int = 10,
        max_labeled_demos: int = 4,
        max_bootstrapped_demos: int = -1,
        stop_at_score: float = 80.0,
        k_demos: int = 4,
        max_history_chars: int = 30000,
        persona_examples: int = 2,
        answer_parsing: str = "strict",
        sampling_seed: int = 0,
        rm_model: str = "meta-llama/Llama-3.1-8B-Instruct",
        finetune: str = "lora",
        lora_r: int = 16,
        lora_alpha: float = 32.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        epochs: int = 1,
        batch_size: int = 8,
        max_length: int = 2048,
        persona_chars: int = 2000,
        rm_dtype: str = "auto",
        gradient_checkpointing: bool = False,
        release_llm: bool = True,
        trust_remote_code: bool = False,
    ):
        self.variant = variant
        self.backend = backend
        self.model = model
        self.base_url = base_url
        self.engine_options = engine_options
        self.cache = cache
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.persona_max_tokens = persona_max_tokens
        self.retry_temperature = retry_temperature
        self.max_retries = max_retries
        self.max_attempts = max_attempts
        self.train_val_ratio = train_val_ratio
        self.num_candidates = num_candidates
        self.max_labeled_demos = max_labeled_demos
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.stop_at_score = stop_at_score
        self.k_demos = k_demos
        self.max_history_chars = max_history_chars
        self.persona_examples = persona_examples
        self.answer_parsing = answer_parsing
        self.sampling_seed = sampling_seed
        self.rm_model = rm_model
        self.finetune = finetune
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_length = max_length
        self.persona_chars = persona_chars
        self.rm_dtype = rm_dtype
        self.gradient_checkpointing = gradient_checkpointing
        self.release_llm = release_llm
        self.trust_remote_code = trust_remote_code

    # ------------------------------------------------------------------ model
    def _check(self) -> None:
        if self.finetune not in ("lora", "full"):
            raise BenchError(f"finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.max_length < 16 or self.lr <= 0:
            raise BenchError("synthesizeme-ft needs epochs ≥ 0, batch_size ≥ 1, max_length ≥ 16 and lr > 0")
        if self.finetune == "lora" and (self.lora_r < 1 or self.lora_alpha <= 0):
            raise BenchError("LoRA needs lora_r ≥ 1 and lora_alpha > 0")

    def _build_rm(self, ctx: Context) -> None:
        import torch
        from torch import nn

        from bench.llm.models import TINY_ALIAS, remote_code_guard, resolve_model, tiny_backbone, tiny_tokenizer

        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise BenchError("synthesizeme-ft needs the 'transformers' package", hint="pip install 'bench-prm[text]'") from None
        device = ctx.device
        dtype = {"auto": torch.float32 if device == "cpu" else torch.bfloat16, "float32": torch.float32, "bfloat16": torch.bfloat16}.get(self.rm_dtype)
        if dtype is None:
            raise BenchError(f"rm_dtype must be auto, float32 or bfloat16, got {self.rm_dtype!r}")
        g = ctx.torch_generator(offset=17)
        if self.rm_model == TINY_ALIAS:
            tok = tiny_tokenizer()
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            backbone = tiny_backbone(len(tok), seed=seed).to(dtype)
        else:
            path, _ = resolve_model(self.rm_model)
            trc = bool(self.trust_remote_code)  # code shipped with the checkpoint runs only when asked
            with remote_code_guard(self.rm_model, f"--param {self.name}.trust_remote_code=true"):
                tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trc)
                backbone = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trc)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        tok.truncation_side = "left"  # keep the response; cut the start (the persona) first
        backbone.to(device)
        if self.gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = int(backbone.config.hidden_size)
        head = nn.Linear(hidden, 1, dtype=torch.float32)
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / math.sqrt(hidden + 1), generator=g)
            head.bias.zero_()
        head.to(device)
        if self.finetune == "lora":
            for p in backbone.parameters():
                p.requires_grad_(False)
            lora = _lora_linear_cls()
            targets = [(n, m) for n, m in backbone.named_modules() if n.rsplit(".", 1)[-1] in LORA_TARGETS and isinstance(m, nn.Linear)]
            if not targets:
                raise BenchError(f"no {LORA_TARGETS} linear layers in {self.rm_model}", hint="use finetune=full for this architecture")
            for n, m in targets:
                parent = backbone.get_submodule(n.rsplit(".", 1)[0]) if "." in n else backbone
                setattr(parent, n.rsplit(".", 1)[-1], lora(m, self.lora_r, self.lora_alpha, g))
        self.tok_ = tok
        self.backbone_ = backbone
        self.head_ = head
        self.hidden_ = hidden

    def _render(self, persona: str | None, row: int) -> str:
        msgs = [{"role": "system", "content": persona_system(persona, self.persona_chars)}, *self.ctx_.messages(int(row))]
        if getattr(self.tok_, "chat_template", None):
            return self.tok_.apply_chat_template(msgs, tokenize=False)
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in msgs) + (self.tok_.eos_token or "")

    def _forward(self, texts: list[str]):
        import torch

        enc = self.tok_(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(self.ctx_.device) for k, v in enc.items()}
        out = self.backbone_(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        h = out.last_hidden_state
        last = enc["attention_mask"].sum(dim=1) - 1
        pooled = h[torch.arange(h.shape[0], device=h.device), last].float()
        return self.head_(pooled).squeeze(-1)

    def _trainable(self) -> list:
        return [p for p in list(self.backbone_.parameters()) + list(self.head_.parameters()) if p.requires_grad]

    # ------------------------------------------------------------------ the contract
    def fit(self, train: UserPairs, ctx: Context) -> "SynthesizeMeFT":
        import torch

        from bench.methods.synthesizeme.pipeline import Ledger

        self._check()
        self._setup(ctx)
        if len(train) == 0:
            raise BenchError("synthesizeme-ft has no training pairs (no seen user has a train pair within the budget)")
        fit_ledger = Ledger(train.n_users)
        states = self._states(train)
        self.pipeline_.personas(states, fit_ledger)
        self.fit_ledger_ = fit_ledger
        personas = [st.persona for st in states]
        if self.release_llm:
            self.engine_.backend.close()  # free the judge (GPU memory); the next cache miss reloads it
        self._build_rm(ctx)
        params = self._trainable()
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        g = ctx.torch_generator(offset=29)
        n = len(train)
        steps = self.epochs * math.ceil(n / self.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(steps, 1)))  # linear decay
        self.backbone_.train()
        losses = []
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=g).numpy()
            for start in range(0, n, self.batch_size):
                idx = perm[start : start + self.batch_size]
                texts = [self._render(personas[train.user[k]], train.chosen[k]) for k in idx]
                texts += [self._render(personas[train.user[k]], train.rejected[k]) for k in idx]
                s = self._forward(texts)
                margin = s[: len(idx)] - s[len(idx) :]
                loss = torch.nn.functional.softplus(-margin).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
        self.backbone_.eval()
        self.train_losses_ = losses
        self.n_train_pairs_ = n
        return self

    def adapt(self, support: UserPairs) -> "SynthesizeMeFT":
        from bench.methods.synthesizeme.pipeline import Ledger

        self.ledger_ = Ledger(support.n_users)
        self.states_ = self._states(support)
        self.pipeline_.personas(self.states_, self.ledger_)
        self.personas_ = [st.persona for st in self.states_]
        return self

    def score(self, queries: Queries) -> np.ndarray:
        import torch

        keys = np.stack([np.r_[queries.user, queries.user], np.r_[queries.a, queries.b]], axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        scores = np.empty(len(uniq), dtype=np.float64)
        bs = max(1, 2 * self.batch_size)
        with torch.inference_mode():
            for start in range(0, len(uniq), bs):
                chunk = uniq[start : start + bs]
                texts = [self._render(self.personas_[u], r) for u, r in chunk]
                scores[start : start + len(chunk)] = self._forward(texts).double().cpu().numpy()
        n = len(queries)
        return scores[inv[:n]] - scores[inv[n:]]

    def extra_rows(self) -> dict[str, np.ndarray]:
        return self._common_rows(self.states_, self.ledger_)

    def extra_meta(self) -> dict[str, Any]:
        meta = self._meta(self.states_, self.ledger_)
        meta["fit_stages"] = self.fit_ledger_.stages
        meta["rm"] = {
            "model": self.rm_model,
            "finetune": self.finetune,
            "train_pairs": self.n_train_pairs_,
            "steps": len(self.train_losses_),
            "first_loss": self.train_losses_[0] if self.train_losses_ else None,
            "last_loss": self.train_losses_[-1] if self.train_losses_ else None,
        }
        return meta

    # ------------------------------------------------------------------ parameters
    def param_count(self) -> ParamCount:
        head = self.hidden_ + 1
        if self.finetune == "full":
            return ParamCount(shared=sum(p.numel() for p in self.backbone_.parameters()) + head, per_user=0)
        cfg = self.backbone_.config
        h = int(cfg.hidden_size)
        heads = int(cfg.num_attention_heads)
        kv = int(getattr(cfg, "num_key_value_heads", heads) or heads)
        hd = int(getattr(cfg, "head_dim", None) or h // heads)
        per_layer = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h)}
        r = self.lora_r
        lora = int(cfg.num_hidden_layers) * sum(r * (i + o) for i, o in per_layer.values())
        return ParamCount(shared=lora + head, per_user=0)

    def trained_param_count(self) -> ParamCount:
        return ParamCount(shared=sum(p.numel() for p in self._trainable()), per_user=0)
