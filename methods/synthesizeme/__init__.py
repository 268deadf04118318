"""SynthesizeMe (Ryan et al., ACL 2025): a persona-guided LLM judge, run as batched stages.

``synthesizeme`` is the in-context variant (the MRM paper's "SynthesizeMe (ICL)"): per user, a
persona and demonstrations are synthesised from the user's support pairs, and the resulting judge
compares every test pair in both orders. ``synthesizeme-ft`` (``ft.py``) fine-tunes a reward
model conditioned on the persona. The stages are in ``pipeline.py``, the prompts in
``prompts.py``; the engine (vLLM, an OpenAI-compatible server, transformers) in ``bench.llm``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.api import Context, Method, ParamCount, Queries, UserPairs
from bench.errors import BenchError
from bench.hashing import id_hashes, mix64, tag

log = logging.getLogger("bench.synthesizeme")

TEST_DATASET = "text-prefs:users=8,pairs=6,features=none"


class _LLMMethod(Method):
    """Shared plumbing of the SynthesizeMe methods: engine, texts, per-user items, accounting."""

    requires: ClassVar[frozenset[str]] = frozenset({"text", "llm"})
    kind: ClassVar[str] = "personalized input"
    test_dataset: ClassVar[str] = TEST_DATASET

    @classmethod
    def source_files(cls) -> list[Path]:
        """The method's package and the engine layer: editing either reruns the cells."""
        here = Path(__file__).resolve().parent
        llm = here.parent.parent / "bench" / "llm"
        if not llm.is_dir():  # installed layout: bench/methods/synthesizeme → bench/llm
            llm = here.parent.parent / "llm"
        return sorted(here.glob("*.py")) + sorted(llm.glob("*.py"))

    @classmethod
    def resources_for(cls, params: dict[str, Any], options: dict[str, Any]) -> dict[str, float]:
        """A vLLM engine inside the task needs its GPUs; with ``llm_replicas`` the engines are Ray
        actors that ask for their own, and the task itself needs a CPU only."""
        from bench.llm.vllm_compat import runs_on_cpu

        out = dict(cls.resources)
        if params.get("backend") == "vllm" and not options.get("llm_replicas") and not runs_on_cpu():
            out.setdefault("num_gpus", float((params.get("engine_options") or {}).get("tensor_parallel_size", 1)))
        return out

    # ------------------------------------------------------------------ helpers
    def _settings(self):
        from bench.methods.synthesizeme.pipeline import Settings

        return Settings(
            variant=self.variant,
            train_val_ratio=self.train_val_ratio,
            num_candidates=self.num_candidates,
            max_labeled_demos=self.max_labeled_demos,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            stop_at_score=self.stop_at_score,
            k_demos=self.k_demos,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            persona_max_tokens=self.persona_max_tokens,
            retry_temperature=self.retry_temperature,
            max_retries=self.max_retries,
            max_history_chars=self.max_history_chars,
            persona_examples=self.persona_examples,
            answer_parsing=self.answer_parsing,
            seed=self.sampling_seed,
        )

    def _setup(self, ctx: Context) -> None:
        from bench.llm import make_engine
        from bench.methods.synthesizeme.pipeline import Pipeline

        if ctx.text is None:
            raise BenchError(
                f"{self.name} needs response texts, which dataset '{ctx.info.name}' does not provide",
                hint="use a dataset with prompts and responses (e.g. text-prefs), or add prompt/chosen_text/rejected_text columns",
            )
        self.ctx_ = ctx
        settings = self._settings()
        settings.check()
        opts = dict(self.engine_options or {})
        if "trust_remote_code" in opts:
            raise BenchError(
                f"{self.name}: trust_remote_code is a parameter of the method, not an engine option",
                hint=f"--param {self.name}.trust_remote_code=true (recorded with the cell's parameters)",
            )
        if self.backend == "openai":
            opts.setdefault("base_url", self.base_url)
        if self.backend in ("vllm", "transformers"):  # they load checkpoints: code shipped with one runs only when asked
            opts["trust_remote_code"] = bool(self.trust_remote_code)
        # execution option (bench run --executor ray --llm-replicas N): engines sharing the requests;
        # not a parameter — answers are the same, so cell keys must not change
        replicas = int(ctx.options.get("llm_replicas") or 1)
        self.engine_ = make_engine(
            self.backend, self.model, cache=self.cache, max_attempts=self.max_attempts, device=ctx.device, threads=ctx.threads,
            log=log.warning, replicas=replicas, **opts
        )
        self.pipeline_ = Pipeline(self.engine_, settings)
        self._texts: dict[int, tuple[str, str]] = {}

    def _text(self, row: int) -> tuple[str, str]:
        from bench.methods.synthesizeme.prompts import render_conversation

        row = int(row)
        if row not in self._texts:
            msgs = self.ctx_.messages(row)
            if not msgs or msgs[-1]["role"] != "assistant":
                raise BenchError(f"response row {row} has no assistant message", hint="each response row must end with the response text")
            self._texts[row] = (render_conversation(msgs[:-1]), msgs[-1]["content"])
        return self._texts[row]

    def _states(self, pairs: UserPairs) -> list:
        """Per-user train/val states from labelled pairs, each pair in a seeded orientation."""
        from bench.methods.synthesizeme.prompts import Item

        flip = (mix64(np.uint64(self.ctx_.seed), np.uint64(tag("synthesizeme-orient")), id_hashes(pairs.pair_id.astype(str))) & np.uint64(1)).astype(bool)
        items: list[list] = [[] for _ in range(pairs.n_users)]
        for k in range(len(pairs)):
            u = int(pairs.user[k])
            conv, ch = self._text(pairs.chosen[k])
            _, rj = self._text(pairs.rejected[k])
            pos = len(items[u])
            if flip[k]:
                items[u].append(Item(u, conv, ch, rj, "First", pos))
            else:
                items[u].append(Item(u, conv, rj, ch, "Second", pos))
        return [self.pipeline_.split(u, items[u]) for u in range(pairs.n_users)]

    def _common_rows(self, states, ledger) -> dict[str, np.ndarray]:
        n_verified = np.array([sum(t is not None for t in st.traces_a) for st in states], dtype=np.int64)
        rows = {
            "llm_requests": ledger.cols["requests"].astype(np.int64),
            "llm_calls": ledger.cols["backend_calls"].astype(np.int64),
            "llm_cache_hits": ledger.cols["cache_hits"].astype(np.int64),
            "llm_duplicates": ledger.cols["duplicates"].astype(np.int64),
            "llm_prompt_tokens": ledger.cols["prompt_tokens"].astype(np.int64),
            "llm_completion_tokens": ledger.cols["completion_tokens"].astype(np.int64),
            "llm_seconds": ledger.cols["seconds"],
            "n_verified": n_verified,
            "persona_chars": np.array([len(st.persona or "") for st in states], dtype=np.int64),
            "persona_parsed": np.array([st.persona_parsed for st in states], dtype=bool),
            "persona_candidate": np.array([st.persona_pick.cid if st.persona_pick else -9 for st in states], dtype=np.int64),
            "persona": np.array([st.persona or "" for st in states], dtype=object),
        }
        return rows

    def _meta(self, states, ledger) -> dict[str, Any]:
        return {
            "engine": self.engine_.describe(),
            "engine_stats": self.engine_.stats.as_dict(),
            "stages": ledger.stages,
            "settings": self.pipeline_.s.__dict__ | {"prompt_version": _prompt_version()},
        }


def _prompt_version() -> str:
    from bench.methods.synthesizeme.prompts import PROMPT_VERSION

    return PROMPT_VERSION


class SynthesizeMe(_LLMMethod):
    name: ClassVar[str] = "synthesizeme"
    version: ClassVar[str] = "1"
    summary: ClassVar[str] = "persona + verified demos synthesised per user; an LLM judge compares each test pair in both orders (ICL)"
    antisymmetric: ClassVar[bool] = False  # a judge sees both options at once
    test_params: ClassVar[dict] = {"backend": "scripted", "model": "hash", "cache": False}

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
        self.trust_remote_code = trust_remote_code

    def fit(self, train: UserPairs, ctx: Context) -> "SynthesizeMe":
        # Nothing is shared across users: the judge is personalised from each user's support alone.
        self._setup(ctx)
        return self

    def adapt(self, support: UserPairs) -> "SynthesizeMe":
        from bench.methods.synthesizeme.pipeline import Ledger

        self.ledger_ = Ledger(support.n_users)
        self.states_ = self._states(support)
        self.pipeline_.personas(self.states_, self.ledger_)
        self.pipeline_.judges(self.states_, self.ledger_)
        self.test_judgements_ = np.zeros(support.n_users, dtype=np.int64)
        self.test_unparsed_ = np.zeros(support.n_users, dtype=np.int64)
        return self

    def score(self, queries: Queries) -> np.ndarray:
        from bench.methods.synthesizeme.prompts import Item

        jobs = []
        for k in range(len(queries)):
            u = int(queries.user[k])
            conv, ta = self._text(queries.a[k])
            _, tb = self._text(queries.b[k])
            st = self.states_[u]
            jobs.append((st, Item(u, conv, ta, tb)))  # a shown first
            jobs.append((st, Item(u, conv, tb, ta)))  # b shown first
        answers, _ = self.pipeline_.test(jobs, self.ledger_)
        value = {"First": 1.0, "Second": -1.0, None: 0.0}
        margin = np.zeros((len(queries), 2), dtype=np.float64)
        for k in range(len(queries)):
            margin[k, 0] = value[answers[2 * k]]  # +1: a preferred
            margin[k, 1] = -value[answers[2 * k + 1]]  # "Second" in the swapped order also means a
        unparsed = np.array([a is None for a in answers], dtype=np.int64).reshape(-1, 2).sum(axis=1)
        n_users = len(queries.users)
        self.test_judgements_ = 2 * np.bincount(queries.user, minlength=n_users).astype(np.int64)
        self.test_unparsed_ = np.bincount(queries.user, weights=unparsed, minlength=n_users).astype(np.int64)
        return margin

    def extra_rows(self) -> dict[str, np.ndarray]:
        rows = self._common_rows(self.states_, self.ledger_)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(self.test_judgements_ > 0, self.test_unparsed_ / np.maximum(self.test_judgements_, 1), np.nan)
        rows.update(
            {
                "test_judgements": self.test_judgements_,
                "test_unparsed": self.test_unparsed_,
                "parse_failure_rate": rate,
                "n_demos": np.array([len(self.pipeline_.final_demos(st)) for st in self.states_], dtype=np.int64),
                "judge_candidate": np.array([st.judge_pick.cid if st.judge_pick else -9 for st in self.states_], dtype=np.int64),
                "judge_val_score": np.array([st.judge_pick.score if st.judge_pick else np.nan for st in self.states_], dtype=np.float64),
            }
        )
        return rows

    def extra_meta(self) -> dict[str, Any]:
        meta = self._meta(self.states_, self.ledger_)
        n = int(self.test_judgements_.sum())
        meta["test"] = {
            "judgements": n,
            "unparsed": int(self.test_unparsed_.sum()),
            "parse_failure_rate": float(self.test_unparsed_.sum() / n) if n else None,
            "users_with_demos": int(sum(len(self.pipeline_.final_demos(st)) > 0 for st in self.states_)),
            "users": len(self.states_),
        }
        return meta

    def param_count(self) -> ParamCount:
        return ParamCount(0, 0)  # nothing is trained; the judge's weights are frozen
