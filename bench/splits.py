"""The user-split protocol (``docs/protocol.md``).

One split = one seed:

1. users → seen / unseen: sort the user ids, shuffle with the seed, the first ⌊ratio·n⌋ are seen;
2. per user, train / test halves: by group (shuffle the user's groups with a key derived from
   (seed, user, group); the first ⌊n/2⌋ groups are train) or by the dataset's source split;
3. per user, one seeded permutation of the train half (``order``); a budget of k takes the
   pairs with ``order < k``, so supports are nested across budgets.

A split is persisted as a Parquet file with two hashes, both verified when it is read: the split hash
(what defines the split; every result row carries it) and a content hash of every stored row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data import Dataset
from bench.errors import BenchError, IntegrityError
from bench.hashing import array_digest, id_hashes, mix64, tag

SPLIT_VERSION = "1"


@dataclass(frozen=True)
class Split:
    """A split of one dataset. Arrays are aligned with ``dataset.pairs`` rows."""

    seed: int
    seen_ratio: float
    users: np.ndarray  # (U,) sorted user ids
    seen: np.ndarray  # (U,) bool
    user_index: np.ndarray  # (n_pairs,) int32 index into users
    train: np.ndarray  # (n_pairs,) bool: in the user's train half
    order: np.ndarray  # (n_pairs,) int32 rank in the user's train permutation, -1 on test
    hash: str

    @property
    def n_seen(self) -> int:
        return int(self.seen.sum())

    def budget_mask(self, shots: int | None, unseen_shots: int | None) -> np.ndarray:
        """Train pairs inside the budgets (None = all): seen users get ``shots``, unseen ``unseen_shots``."""
        big = np.iinfo(np.int32).max
        limit_user = np.where(self.seen, big if shots is None else shots, big if unseen_shots is None else unseen_shots)
        return self.train & (self.order < limit_user[self.user_index])


def make_split(dataset: Dataset, seed: int, seen_ratio: float = 0.5) -> Split:
    if not 0.0 < seen_ratio < 1.0:
        raise BenchError(f"seen ratio must be in (0, 1), got {seen_ratio}")
    pairs = dataset.pairs
    users = np.array(sorted(pairs["user"].astype(str).unique()), dtype=object)
    user_index = np.searchsorted(users.astype(str), pairs["user"].astype(str).to_numpy()).astype(np.int32)

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(users))
    n_seen = int(len(users) * seen_ratio)
    seen = np.zeros(len(users), dtype=bool)
    seen[perm[:n_seen]] = True

    u_hash = dataset.arrays()["user_hash"]
    if dataset.split_by == "source":
        train = pairs["source_split"].astype(str).to_numpy() == "train"
    else:
        train = _group_halves(pairs, seed, u_hash)

    # Nested supports: rank every train pair of a user by a key of (seed, user, pair id).
    p_hash = dataset.arrays()["pair_hash"]
    key = mix64(np.uint64(seed), np.uint64(tag("order")), u_hash, p_hash)
    order = np.full(len(pairs), -1, dtype=np.int32)
    tr = np.flatnonzero(train)
    # sort train pairs by (user, key); rank within user
    idx = tr[np.lexsort((key[tr], user_index[tr]))]
    u_sorted = user_index[idx]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(idx)]))
    order[idx] = (np.arange(len(idx)) - run_start).astype(np.int32)

    h = array_digest(
        np.array([SPLIT_VERSION, dataset.fingerprint, str(seed), repr(seen_ratio)], dtype=object),
        users,
        seen,
        pairs["pair_id"].astype(str).to_numpy(dtype=object),
        train,
        order,
    )[:16]
    return Split(seed, seen_ratio, users, seen, user_index, train, order, h)


def _group_halves(pairs: pd.DataFrame, seed: int, u_hash: np.ndarray) -> np.ndarray:
    """PRISM style: per user, shuffle its groups; the first ⌊n/2⌋ are train."""
    groups = pairs["group"].astype(str).to_numpy()
    g_uniq, g_inv = np.unique(groups, return_inverse=True)
    # user of each group (groups are single-user by validation)
    g_user = np.empty(len(g_uniq), dtype=np.uint64)
    g_user[g_inv] = u_hash
    g_key = mix64(np.uint64(seed), np.uint64(tag("halves")), g_user, id_hashes(g_uniq))
    ord_ = np.lexsort((g_key, g_user))
    gu = g_user[ord_]
    starts = np.r_[0, np.flatnonzero(gu[1:] != gu[:-1]) + 1]
    lengths = np.diff(np.r_[starts, len(ord_)])
    rank = np.arange(len(ord_)) - np.repeat(starts, lengths)
    n_train = np.repeat(lengths // 2, lengths)
    g_train = np.zeros(len(g_uniq), dtype=bool)
    g_train[ord_] = rank < n_train
    return g_train[g_inv]


# ---------------------------------------------------------------------------- persistence


def split_path(root: Path, dataset: Dataset, seed: int, seen_ratio: float) -> Path:
    ratio = f"{seen_ratio:g}".replace(".", "p")
    return Path(root) / "splits" / f"{dataset.name}-{dataset.fingerprint[:12]}" / f"seed{seed}-r{ratio}.parquet"


def _content_digest(pair_id, user, seen, half, order) -> str:
    """Digest of a split file's columns exactly as stored (every row, not only what the split hash covers)."""
    return array_digest(
        np.asarray(pair_id, dtype=object).astype(str).astype(object),
        np.asarray(user, dtype=object).astype(str).astype(object),
        np.asarray(seen, dtype=bool),
        np.asarray(half, dtype=object).astype(str).astype(object),
        np.asarray(order, dtype=np.int32),
    )


def save_split(split: Split, dataset: Dataset, path: Path) -> None:
    import json

    import pyarrow as pa

    from bench.store import atomic_write_table

    cols = {
        "pair_id": dataset.pairs["pair_id"].astype(str).to_numpy(),
        "user": split.users[split.user_index].astype(str),
        "seen": split.seen[split.user_index],
        "half": np.where(split.train, "train", "test"),
        "order": split.order,
    }
    table = pa.table(cols)
    info = {
        "hash": split.hash,
        "seed": split.seed,
        "seen_ratio": split.seen_ratio,
        "dataset": dataset.name,
        "fingerprint": dataset.fingerprint,
        "version": SPLIT_VERSION,
        "content": _content_digest(**cols),
    }
    meta = {b"bench_split": json.dumps(info, sort_keys=True).encode()}
    atomic_write_table(table.replace_schema_metadata(meta), Path(path))


def load_or_create_split(root: Path | None, dataset: Dataset, seed: int, seen_ratio: float = 0.5) -> Split:
    """The split for (dataset, seed); persisted under ``root`` and verified against its hashes."""
    split = make_split(dataset, seed, seen_ratio)
    if root is None:
        return split
    path = split_path(root, dataset, seed, seen_ratio)
    if path.exists():
        stored = read_split_hash(path)
        if stored != split.hash:
            raise IntegrityError(
                f"split file {path} has hash {stored}, but this dataset and seed give {split.hash}",
                hint="the dataset changed under the same fingerprint or the file was edited; "
                f"delete {path} to re-create it",
            )
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_split(split, dataset, path)
        except OSError as e:
            from bench.errors import storage_error

            raise storage_error(e, path.parent, f"split file {path.name}", "choose another results directory with --results DIR",
                                "finished cells are kept: rerun the same command to resume") from None
    return split


def read_split_hash(path: Path) -> str:
    import json

    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
        info = json.loads(md[b"bench_split"])
        table = pq.read_table(path)
    except Exception as e:
        raise IntegrityError(f"split file {path} is unreadable: {e}", hint=f"delete {path}; it will be re-created") from None
    df = table.to_pandas()
    # Every stored row, as stored (files written before this check existed have no "content").
    if "content" not in info and not set(info) <= {"hash", "seed", "seen_ratio", "dataset", "fingerprint", "version"}:
        raise IntegrityError(f"split file {path} has no valid content hash (corrupt or edited)", hint=f"delete {path} and rerun")
    if "content" in info:
        try:
            got = _content_digest(df["pair_id"], df["user"], df["seen"], df["half"], df["order"])
        except Exception as e:
            raise IntegrityError(f"split file {path} is unreadable: {e}", hint=f"delete {path}; it will be re-created") from None
        if got != info["content"]:
            raise IntegrityError(
                f"split file {path} does not match its recorded content hash (corrupt or edited)",
                hint=f"the file is corrupt; delete {path} and rerun",
            )
    # Recompute the split hash from the stored columns.
    users = np.array(sorted(df["user"].unique()), dtype=object)
    seen = df.groupby("user")["seen"].first().reindex(users).to_numpy(dtype=bool)
    h = array_digest(
        np.array([info["version"], info["fingerprint"], str(info["seed"]), repr(info["seen_ratio"])], dtype=object),
        users,
        seen,
        df["pair_id"].astype(str).to_numpy(dtype=object),
        (df["half"] == "train").to_numpy(),
        df["order"].to_numpy(dtype=np.int32),
    )[:16]
    if h != info["hash"]:
        raise IntegrityError(
            f"split file {path} does not match its recorded hash (content {h}, recorded {info['hash']})",
            hint=f"the file is corrupt; delete {path} and rerun",
        )
    return h
