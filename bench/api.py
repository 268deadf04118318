"""The method API: what the engine hands a method, and what a method returns.

A method is a small sklearn-shaped class:

* ``__init__(**params)`` stores its parameters and nothing else;
* ``fit(train, ctx)`` learns shared parameters from the **seen** users' train pairs (within the
  budget) and returns ``self``;
* ``adapt(support)`` personalises to every user (seen and unseen) from that user's support pairs
  (train half within budget) and returns ``self``; it must not change what ``fit`` learned, so it
  can be called again with another budget;
* ``score(queries)`` returns, for each query pair, the margin ``score(a) - score(b)`` (shape
  ``(n,)``) or ``R`` replicate margins (shape ``(n, R)``, e.g. an LLM judge asked in both orders).

A method never sees a test label: queries present the two responses of a test pair as options
``a`` and ``b`` in an order fixed by a seeded coin, and the engine alone knows which was chosen.
It never reads a split file and never computes a metric.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.data import DatasetInfo, Features
from bench.hashing import digest, id_hashes, mix64, tag


@dataclass(frozen=True)
class ParamCount:
    """Trainable parameters: ``shared + per_user × n_users``."""

    shared: int
    per_user: int

    def total(self, n_users: int) -> int:
        return int(self.shared + self.per_user * n_users)


@dataclass(frozen=True)
class UserPairs:
    """Labelled pairs of a set of users (seen users' train pairs for ``fit``; supports for ``adapt``).

    Index space: ``users``/``seen`` list every user of the split (sorted ids); ``user`` indexes into
    them. Pairs are sorted by user, then by the user's support order, so ``pairs[:k]`` of a user is
    its budget-k support and each user's pairs are contiguous (see :meth:`offsets`).
    """

    users: np.ndarray
    seen: np.ndarray
    user: np.ndarray
    group: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    pair_id: np.ndarray
    seed: int = 0

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def counts(self) -> np.ndarray:
        """Pairs per user, (U,)."""
        return np.bincount(self.user, minlength=self.n_users)

    def offsets(self) -> np.ndarray:
        """(U+1,) CSR offsets: pairs of user u are ``[offsets[u], offsets[u+1])``."""
        return np.r_[0, np.cumsum(self.counts())]

    def subset(self, mask: np.ndarray) -> "UserPairs":
        mask = np.asarray(mask)
        return replace(
            self,
            user=self.user[mask],
            group=self.group[mask],
            chosen=self.chosen[mask],
            rejected=self.rejected[mask],
            pair_id=self.pair_id[mask],
        )

    def for_users(self, user_mask: np.ndarray) -> "UserPairs":
        """Only the pairs of users where ``user_mask`` (U,) is True (index space unchanged)."""
        return self.subset(np.asarray(user_mask, dtype=bool)[self.user])

    def carve_validation(self, fraction: float = 0.1, min_groups: int = 2) -> tuple["UserPairs", "UserPairs"]:
        """Split each user's train groups into (fit, validation), for early stopping or tuning.

        Users with fewer than ``min_groups`` groups keep everything in the fit part. The carve-out
        is deterministic given the split seed, and only ever touches train pairs.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
        key = mix64(np.uint64(self.seed), np.uint64(tag("validation")), id_hashes(self.group.astype(str)))
        g_uniq, g_first, g_inv = np.unique(self.group, return_index=True, return_inverse=True)
        g_user = self.user[g_first]
        g_key = key[g_first]
        order = np.lexsort((g_key, g_user))
        gu = g_user[order]
        starts = np.r_[0, np.flatnonzero(np.diff(gu)) + 1]
        lengths = np.diff(np.r_[starts, len(order)])
        rank = np.arange(len(order)) - np.repeat(starts, lengths)
        n_val = np.repeat(np.where(lengths >= min_groups, np.maximum(1, np.floor(lengths * fraction)), 0), lengths)
        g_val = np.zeros(len(g_uniq), dtype=bool)
        g_val[order] = rank < n_val
        val = g_val[g_inv]
        return self.subset(~val), self.subset(val)


@dataclass(frozen=True)
class Queries:
    """Unlabelled pairs to score. Options ``a``/``b`` are response rows in a seeded random order."""

    users: np.ndarray
    seen: np.ndarray
    user: np.ndarray
    group: np.ndarray
    a: np.ndarray
    b: np.ndarray
    pair_id: np.ndarray
    # Ground-truth rewards of a and b for the pair's user: filled only for methods that require
    # the "oracle" capability (synthetic data), None otherwise.
    truth_a: np.ndarray | None = None
    truth_b: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class Context:
    """Everything a method may read besides its pairs: features, RM scores, texts, seed, device."""

    info: DatasetInfo
    features: Features | None = None
    prompt_features: Features | None = None  # one row per prompt; row of response r = prompt_of[r]
    prompt_of: np.ndarray | None = None  # (n_rows,) int prompt row of each response row
    rm_score: np.ndarray | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    text: Any = None  # a bench.data.Dataset-like object with .messages(row), when the dataset has text
    options: dict[str, Any] = field(default_factory=dict)

    def messages(self, row: int) -> list[dict[str, str]]:
        if self.text is None:
            raise RuntimeError("this dataset has no text")
        return self.text.messages(row)

    def torch_generator(self, offset: int = 0):
        import torch

        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.seed) * 1_000_003 + offset)
        return g


class Method:
    """Base class of every method plugin. Subclasses set the class attributes and implement
    ``fit``, ``adapt`` and ``score``; see the module docstring for the contract."""

    #: registry name (the entry-point name)
    name: ClassVar[str] = ""
    #: bump when results change for the same params (also part of every cell key)
    version: ClassVar[str] = "1"
    #: what a dataset must provide: a subset of bench.data.CAPABILITIES
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    #: one-line description shown by ``bench list``
    summary: ClassVar[str] = ""
    #: parameters small enough for the contract tests (tiny synthetic data, seconds on a CPU)
    test_params: ClassVar[dict[str, Any]] = {}
    #: "personalized input", "personalized parameter", "meta-learning", "reference" (shown by
    #: ``bench list``, used for markers in figures); a method that does not say is "other"
    kind: ClassVar[str] = "other"
    #: what one fit group asks of a Ray cluster (``bench run --executor ray``): ``num_cpus``,
    #: ``num_gpus``, ``memory`` (bytes) or custom Ray resources. Empty: ``--threads`` CPUs (1 by
    #: default) and one GPU when ``gpu`` is in ``requires`` or ``--device`` is CUDA. Override
    #: :meth:`resources_for` when the need depends on the parameters.
    resources: ClassVar[dict[str, float]] = {}

    ctx_: Context

    @classmethod
    def resources_for(cls, params: dict[str, Any], options: dict[str, Any]) -> dict[str, float]:
        """Resources of one fit group with these parameters and execution options (default: ``resources``)."""
        return dict(cls.resources)

    # ---------------------------------------------------------------- params (sklearn style)
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.name != "self" and p.default is not inspect.Parameter.empty
        }

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    # ---------------------------------------------------------------- metadata
    @classmethod
    def source_files(cls) -> list[Path]:
        mod = inspect.getmodule(cls)
        path = Path(inspect.getfile(cls))
        if mod is not None and path.name == "__init__.py":
            return sorted(path.parent.rglob("*.py"))
        return [path]

    @classmethod
    def source_hash(cls) -> str:
        """Hash of the method's source code, part of every cell key: editing the code reruns it."""
        parts = [p.read_bytes() for p in cls.source_files()]
        return digest(b"\0".join(parts), size=8)

    @classmethod
    def card_path(cls) -> Path:
        path = Path(inspect.getfile(cls))
        return path.with_suffix(".md") if path.name != "__init__.py" else path.parent / "card.md"

    @classmethod
    def card(cls) -> str:
        p = cls.card_path()
        return p.read_text() if p.exists() else ""

    # ---------------------------------------------------------------- the contract
    def fit(self, train: UserPairs, ctx: Context) -> "Method":
        raise NotImplementedError

    def adapt(self, support: UserPairs) -> "Method":
        return self

    def score(self, queries: Queries) -> np.ndarray:
        raise NotImplementedError

    def param_count(self) -> ParamCount:
        """The declared formula (shared, per user) for this configuration and feature dimension."""
        return ParamCount(0, 0)

    def trained_param_count(self) -> ParamCount | None:
        """Counted from the tensors actually trained (None if the method keeps none)."""
        return None

    def extra_rows(self) -> dict[str, np.ndarray]:
        """Optional per-user columns (U,) to store beside accuracy (e.g. parse failures)."""
        return {}

    def extra_meta(self) -> dict[str, Any]:
        """Optional cell-level facts to store in the cell's metadata (e.g. tokens, calls)."""
        return {}


def count_tensors(*tensors) -> int:
    """Number of scalars in the given tensors/arrays (None entries ignored)."""
    n = 0
    for t in tensors:
        if t is None:
            continue
        n += int(t.numel()) if hasattr(t, "numel") else int(np.asarray(t).size)
    return n
