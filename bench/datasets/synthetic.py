"""The built-in synthetic benchmark: multi-user preference data from a known latent world.

The world (all drawn from one seed):

* **Features** imitate reward-model hidden states: ``x = s·(μ + λ ⊙ (P g + A h + σ ε))`` with a
  mean vector μ, an anisotropic per-dimension scale λ (log-normal), a prompt component ``P g``
  shared by every response to the same prompt, a response component ``A h`` (``h`` a latent
  vector with a decaying spectrum) and isotropic noise ε in all ``dim`` dimensions. The overall
  scale ``s`` (default 0.01) is calibrated so that the official BT recipe (full-batch Adam,
  lr 0.5, 1,000 iterations, logit ÷ 100) lands in the paper's range instead of fitting the noise
  dimensions: Adam's per-coordinate steps are scale-free, so the feature scale sets how far a
  fixed number of steps moves the scores.
* **Users** have a true reward ``r_u(h) = θ_uᵀ h`` with ``θ_u = quality·q + T c_u``: a shared
  quality direction ``q`` plus K taste directions ``T``; taste coordinates ``c_u`` come from a few
  user clusters. A fraction of *hard* users have idiosyncratic directions instead.
* **Labels** follow Bradley–Terry with temperature ``beta``: P(a ≻ b) = σ(β (r_u(a) − r_u(b))).
  PRISM-style turns pick the chosen response among up to four by the multinomial logit (the
  Plackett–Luce top choice), which is consistent with BT for every (chosen, rejected) pair.

The generator stores each pair's true user rewards (``true_chosen``/``true_rejected``), so the
oracle row and the Bayes-optimal accuracy ``mean(max(p, 1 − p))`` are known exactly, and a
"reward model" score per response (``rm_score``): a fixed linear head on the stored features that
knows the quality direction only approximately — the analogue of Skywork's score head.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data import Dataset, Features, load_features
from bench.errors import BenchError, DataError
from bench.hashing import digest, file_digest, hash_obj
from bench.progress import note, track

GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class WorldParams:
    style: str = "prism"  # "prism" (conversations, split by group) or "reddit" (split by source)
    users: int = 1287
    dim: int = 4096
    seed: int = 0
    latent: int = 32  # response latent dimensions
    prompt_latent: int = 16
    taste_dims: int = 4
    clusters: int = 4
    hard_fraction: float = 0.15
    quality: float = 1.0
    taste: float = 0.9
    cluster_spread: float = 0.35
    beta: float = 2.0
    spectrum_decay: float = 0.5
    noise: float = 0.15
    scale: float = 0.01  # overall feature scale (see the module docstring)
    rm_error: float = 1.5
    prompt_features: bool = True  # also store one feature row per prompt (for PAL-B)
    # prism style
    conversations: tuple[int, ...] = (6, 6, 6, 6, 6, 6, 6, 7, 7, 8)
    turn0_responses: tuple[int, ...] = (2, 3, 3, 4, 4, 4)
    extra_turn_prob: float = 0.3
    # reddit style
    pairs_min: int = 2500
    pairs_max: int = 5000
    train_fraction: float = 0.52

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorldParams":
        fields = cls.__dataclass_fields__
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise BenchError(
                f"unknown synthetic dataset options {unknown}",
                hint=f"valid options: {', '.join(sorted(fields))}",
            )
        kw = {}
        for k, v in d.items():
            default = fields[k].default
            try:
                if isinstance(default, tuple):
                    v = tuple(_as_int(x) for x in (v if isinstance(v, (list, tuple)) else (v,)))
                elif isinstance(default, bool):
                    if not isinstance(v, bool):
                        raise ValueError
                elif isinstance(default, int):
                    v = _as_int(v)
                elif isinstance(default, float):
                    if isinstance(v, bool):
                        raise ValueError
                    v = float(v)
                    if not math.isfinite(v):
                        raise ValueError
                elif not isinstance(v, str):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                kind = (
                    "a list of integers" if isinstance(default, tuple) else "true or false" if isinstance(default, bool)
                    else "an integer" if isinstance(default, int) else "a finite number" if isinstance(default, float) else "a string"
                )
                raise BenchError(f"synthetic option {k} must be {kind}, got {v!r}", hint=f"e.g. {k}={WorldParams().as_dict()[k]} (the default)") from None
            kw[k] = v
        p = cls(**kw)
        try:
            p.check()
        except BenchError as e:
            e.hint = e.hint or "see the generator options in bench/datasets/synthetic.py and configs/datasets/synthetic-*.yaml"
            raise
        return p

    def check(self) -> None:
        if self.style not in ("prism", "reddit"):
            raise BenchError(f"synthetic style must be 'prism' or 'reddit', got {self.style!r}")
        for name in ("users", "dim", "latent", "prompt_latent", "taste_dims", "clusters"):
            if getattr(self, name) < 1:
                raise BenchError(f"synthetic option {name} must be ≥ 1")
        if self.users < 2:
            raise BenchError("a synthetic dataset needs at least 2 users (seen and unseen)")
        if self.dim < self.latent:
            # the features embed the response latent: a narrower matrix cannot hold it
            raise BenchError(f"synthetic option dim ({self.dim}) must be ≥ latent ({self.latent})", hint=f"raise dim to {self.latent} or lower latent, e.g. dim={self.dim},latent={max(2, self.dim // 2)}")
        if self.taste_dims + 1 > self.latent:
            raise BenchError("taste_dims + 1 must not exceed latent")
        if not 0 <= self.hard_fraction <= 1:
            raise BenchError("hard_fraction must be in [0, 1]")
        if self.pairs_min < 2 or self.pairs_max < self.pairs_min:
            raise BenchError("need 2 ≤ pairs_min ≤ pairs_max")
        if self.seed < 0:
            raise BenchError(f"synthetic option seed must be ≥ 0, got {self.seed}")
        for name in ("quality", "taste", "cluster_spread", "beta", "spectrum_decay", "noise", "scale", "rm_error"):
            if getattr(self, name) < 0:
                raise BenchError(f"synthetic option {name} must be ≥ 0, got {getattr(self, name)}")
        for name in ("extra_turn_prob", "train_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise BenchError(f"synthetic option {name} must be in [0, 1], got {getattr(self, name)}")
        if not self.conversations or min(self.conversations) < 1 or not self.turn0_responses or min(self.turn0_responses) < 2:
            raise BenchError("synthetic conversations must be ≥ 1 and turn0_responses ≥ 2 (lists to sample from)")

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _as_int(v: Any) -> int:
    """An integer option value (``3``, ``3.0``, ``"3"``); anything else raises ValueError/TypeError."""
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, str):
        v = float(v)
    if isinstance(v, float) and not v.is_integer():
        raise ValueError
    return int(v)


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q.astype(np.float64)


class World:
    """The latent world: bases, scales, users. Everything is derived from ``params.seed``."""

    def __init__(self, p: WorldParams):
        self.p = p
        rng = np.random.default_rng([p.seed, 1])
        D, r, rp = p.dim, p.latent, p.prompt_latent
        self.spectrum = (1.0 + np.arange(r)) ** (-p.spectrum_decay)
        # Bases scaled so the prompt part has per-dimension std ≈ 1 and the response part ≈ 0.5.
        self.P = _orthonormal(rng, D, rp) * np.sqrt(D / rp)
        self.A = _orthonormal(rng, D, r) * (0.5 * np.sqrt(D / r))
        self.lam = np.exp(0.5 * rng.standard_normal(D))
        self.mu = rng.standard_normal(D)
        # Reward geometry in the latent space: quality q and K taste directions, all orthonormal.
        dirs = _orthonormal(rng, r, p.taste_dims + 1)
        self.q = dirs[:, 0]
        self.T = dirs[:, 1:]
        # Users: clusters in taste space, plus hard users with idiosyncratic directions.
        centers = rng.standard_normal((p.clusters, p.taste_dims))
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        self.cluster = rng.integers(0, p.clusters, size=p.users)
        c = centers[self.cluster] + p.cluster_spread * rng.standard_normal((p.users, p.taste_dims))
        theta = p.quality * self.q[None, :] + p.taste * c @ self.T.T
        n_hard = int(round(p.hard_fraction * p.users))
        self.hard = np.zeros(p.users, dtype=bool)
        self.hard[rng.permutation(p.users)[:n_hard]] = True
        idio = rng.standard_normal((n_hard, r))
        idio /= np.linalg.norm(idio, axis=1, keepdims=True)
        theta[self.hard] = 0.3 * p.quality * self.q[None, :] + 1.2 * np.hypot(p.quality, p.taste) * idio
        self.theta = theta  # (users, r)
        # The "reward model": a linear head on features that decodes the response latent and
        # weights it by a noisy copy of the quality direction.
        err = rng.standard_normal(r)
        err *= p.rm_error / np.linalg.norm(err)
        A_eff = p.scale * self.lam[:, None] * self.A  # features' response part = A_eff @ h
        dec = np.linalg.solve(A_eff.T @ A_eff, A_eff.T)  # (r, D) least-squares decoder
        self.rm_head = dec.T @ (self.q + err)

    def reward(self, users: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.einsum("nr,nr->n", self.theta[users], h)


def _prism_layout(p: WorldParams, rng: np.random.Generator):
    """Conversations → turns → responses; returns per-row prompt index and per-turn structure."""
    n_conv = rng.choice(np.asarray(p.conversations), size=p.users)
    conv_user = np.repeat(np.arange(p.users), n_conv)
    n_c = len(conv_user)
    turns_per_conv = 1 + (rng.random(n_c) < p.extra_turn_prob).astype(int)
    turn_conv = np.repeat(np.arange(n_c), turns_per_conv)
    first = np.r_[True, turn_conv[1:] != turn_conv[:-1]]
    m = np.where(first, rng.choice(np.asarray(p.turn0_responses), size=len(turn_conv)), 2)
    return conv_user, turn_conv, m


def generate(p: WorldParams, out_dir: Path, chunk_rows: int = 8192) -> None:
    """Write pairs.parquet, responses.parquet, features.npy and meta.json into ``out_dir``."""
    t0 = time.perf_counter()
    world = World(p)
    rng = np.random.default_rng([p.seed, 2])
    r = p.latent

    if p.style == "prism":
        conv_user, turn_conv, m = _prism_layout(p, rng)
        n_turns = len(turn_conv)
        row_turn = np.repeat(np.arange(n_turns), m)
        row_prompt = row_turn
        turn_user = conv_user[turn_conv]
        row_user = turn_user[row_turn]
        h = rng.standard_normal((len(row_turn), r)) * world.spectrum
        util = world.reward(row_user, h)
        # Multinomial-logit choice of the chosen response within each turn (Gumbel-max).
        gumbel = rng.gumbel(size=len(row_turn))
        z = p.beta * util + gumbel
        starts = np.r_[0, np.cumsum(m)[:-1]]
        best = np.maximum.reduceat(z, starts)
        is_best = z == np.repeat(best, m)
        chosen_row_of_turn = np.empty(n_turns, dtype=np.int64)
        chosen_row_of_turn[row_turn[is_best]] = np.flatnonzero(is_best)
        rejected = np.flatnonzero(~is_best)
        chosen = chosen_row_of_turn[row_turn[rejected]]
        pair_user = row_user[rejected]
        pair_conv = turn_conv[row_turn[rejected]]
        group = np.array([f"c{c}" for c in pair_conv], dtype=object)
        source = np.full(len(rejected), "", dtype=object)
        n_prompts = n_turns
    else:
        n_pairs_u = rng.integers(p.pairs_min, p.pairs_max + 1, size=p.users)
        pair_user = np.repeat(np.arange(p.users), n_pairs_u)
        n_pairs = len(pair_user)
        h = rng.standard_normal((2 * n_pairs, r)) * world.spectrum
        row_prompt = np.repeat(np.arange(n_pairs), 2)
        ua = world.reward(pair_user, h[0::2])
        ub = world.reward(pair_user, h[1::2])
        pa = 1.0 / (1.0 + np.exp(-p.beta * (ua - ub)))
        a_wins = rng.random(n_pairs) < pa
        a_rows = 2 * np.arange(n_pairs)
        chosen = np.where(a_wins, a_rows, a_rows + 1)
        rejected = np.where(a_wins, a_rows + 1, a_rows)
        group = np.array([f"p{i}" for i in range(n_pairs)], dtype=object)
        source = np.where(rng.random(n_pairs) < p.train_fraction, "train", "test").astype(object)
        n_prompts = n_pairs
        row_user = np.repeat(pair_user, 2)

    n_rows = len(h)
    g = rng.standard_normal((n_prompts, p.prompt_latent))
    true_chosen = world.reward(pair_user, h[chosen])
    true_rejected = world.reward(pair_user, h[rejected])

    out_dir.mkdir(parents=True, exist_ok=True)
    feats = np.lib.format.open_memmap(out_dir / "features.npy", mode="w+", dtype=np.float16, shape=(n_rows, p.dim))
    rm = np.empty(n_rows, dtype=np.float64)
    Pt, At = world.P.T.astype(np.float32), world.A.T.astype(np.float32)
    lam_scaled = (p.scale * world.lam).astype(np.float32)
    mu_over_lam = (world.mu / world.lam).astype(np.float32)
    head = world.rm_head.astype(np.float32)
    starts = range(0, n_rows, chunk_rows)
    for ci, start in enumerate(track(starts, len(starts), f"generating {n_rows:,} × {p.dim} features")):
        sl = slice(start, min(n_rows, start + chunk_rows))
        crng = np.random.default_rng([p.seed, 3, ci])
        block = g[row_prompt[sl]].astype(np.float32) @ Pt
        block += h[sl].astype(np.float32) @ At
        block += np.float32(p.noise) * crng.standard_normal(block.shape, dtype=np.float32)
        block += mu_over_lam
        block *= lam_scaled
        b16 = block.astype(np.float16)
        feats[sl] = b16
        # The RM score is the head applied to the *stored* features, as a real score head is.
        rm[sl] = b16.astype(np.float32) @ head
    feats.flush()
    del feats
    if p.prompt_features:
        # The templated prompt alone: prompt component and noise, no response component.
        pf = np.lib.format.open_memmap(out_dir / "prompt_features.npy", mode="w+", dtype=np.float16, shape=(n_prompts, p.dim))
        for ci, start in enumerate(range(0, n_prompts, chunk_rows)):
            sl = slice(start, min(n_prompts, start + chunk_rows))
            crng = np.random.default_rng([p.seed, 4, ci])
            block = g[sl].astype(np.float32) @ Pt
            block += np.float32(p.noise) * crng.standard_normal(block.shape, dtype=np.float32)
            block += mu_over_lam
            block *= lam_scaled
            pf[sl] = block.astype(np.float16)
        pf.flush()
        del pf

    users = np.array([f"u{u:05d}" for u in range(p.users)], dtype=object)
    pairs = pd.DataFrame(
        {
            "user": users[pair_user],
            "group": [f"{users[u]}-{gr}" for u, gr in zip(pair_user, group)],
            "pair_id": [f"{users[u]}-{i}" for i, u in enumerate(pair_user)],
            "chosen": chosen.astype(np.int64),
            "rejected": rejected.astype(np.int64),
            "source_split": source.astype(str),
            "true_chosen": true_chosen,
            "true_rejected": true_rejected,
        }
    )
    responses = pd.DataFrame({"prompt_id": row_prompt.astype(np.int64), "rm_score": rm})
    pairs.to_parquet(out_dir / "pairs.parquet", index=False)
    responses.to_parquet(out_dir / "responses.parquet", index=False)
    pt = np.clip(1.0 / (1.0 + np.exp(-p.beta * (true_chosen - true_rejected))), 0, 1)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "params": p.as_dict(),
        "hard_users": users[world.hard].tolist(),
        "cluster": {str(users[i]): int(c) for i, c in enumerate(world.cluster)},
        "bayes_accuracy": float(np.maximum(pt, 1 - pt).mean()),
        "seconds": time.perf_counter() - t0,
        "files": {
            name: file_digest(out_dir / name)
            for name in ("pairs.parquet", "responses.parquet", "features.npy", "prompt_features.npy")
            if (out_dir / name).exists()
        },
    }
    meta["digest"] = meta_digest(meta)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    del row_user


def meta_digest(meta: dict[str, Any]) -> str:
    """Hash of a cached dataset's meta.json (all but the digest itself, as JSON reads it back)."""
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != "digest"}))
    return digest(json.dumps(body, sort_keys=True, separators=(",", ":")))


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def load(name: str, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    """Load (generating and caching on first use) a synthetic preset with option overrides."""
    params = dict(config.get("generator", {}))
    params.update(options)
    p = WorldParams.from_dict(params)
    fp = hash_obj({"generator": GENERATOR_VERSION, "name": name, "params": p.as_dict()}, size=12)
    directory = cache_root() / "datasets" / f"{name}-{fp}"
    if not (directory / "meta.json").exists():
        note(f"generating {name} ({p.users} users, dim {p.dim}) once; cached in {directory}")
        _generate_atomically(p, directory)
    return _open(name, p, fp, directory, config)


def _generate_atomically(p: WorldParams, directory: Path) -> None:
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_generations(directory)
        tmp = directory.parent / f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
        try:
            generate(p, tmp)
            try:
                os.replace(tmp, directory)
            except OSError:
                # Another process finished the same dataset first: keep theirs.
                if not (directory / "meta.json").exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        from bench.errors import storage_error

        raise storage_error(e, directory.parent, f"the generated dataset {directory.name}",
                            "point BENCH_CACHE at a writable directory with room") from None


def remove_stale_generations(directory: Path, min_age_s: float = 3600.0) -> int:
    """Delete ``.<name>.<pid>.<tag>.tmp`` directories that generations killed on this host left
    beside ``directory`` (their pid no longer runs, and they are older than ``min_age_s``, so a
    generation running elsewhere on a shared cache is never touched)."""
    n = 0
    for tmp in directory.parent.glob(f".{directory.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(directory.name) + 2 :].split(".")[0])
            age = time.time() - tmp.stat().st_mtime
        except (ValueError, OSError):
            continue
        try:
            os.kill(pid, 0)
            continue  # still running (or a pid we may not signal: leave it)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        if age >= min_age_s:
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
    return n


def _open(name: str, p: WorldParams, fp: str, directory: Path, config: dict[str, Any]) -> Dataset:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        pairs = pd.read_parquet(directory / "pairs.parquet")
        responses = pd.read_parquet(directory / "responses.parquet")
    except Exception as e:
        raise DataError(
            f"cached synthetic dataset {directory} is unreadable: {e}",
            hint=f"delete {directory}; it is regenerated on the next run",
        ) from None
    if "digest" in meta and meta_digest(meta) != meta["digest"]:  # caches made before the digest have none
        raise DataError(
            f"cached dataset file {directory / 'meta.json'} does not match its recorded digest (corrupt or edited)",
            hint=f"delete {directory}; it is regenerated on the next run",
        )
    _verify_cache(directory, meta)
    arr = load_features(directory / "features.npy")
    pf = Features(load_features(directory / "prompt_features.npy")) if p.prompt_features else None
    ds = Dataset(
        name=name,
        pairs=pairs,
        responses=responses,
        prompts=None,
        features=Features(arr),
        prompt_features=pf,
        split_by="group" if p.style == "prism" else "source",
        family=config.get("family", p.style),
        fingerprint=fp,
        defaults={k: config.get(k) for k in ("shots", "unseen_shots") if k in config},
        meta={"source": "synthetic", "feature_model": "synthetic", "bayes_accuracy": meta["bayes_accuracy"], "params": p.as_dict()},
    )
    return ds.validate()


def _verify_cache(directory: Path, meta: dict[str, Any]) -> None:
    """Check the cached files against their digests, once per (size, mtime) of each file."""
    stamp_path = directory / ".verified.json"
    try:
        stamps = json.loads(stamp_path.read_text())
    except (OSError, json.JSONDecodeError):
        stamps = {}
    changed = False
    for name, expected in meta["files"].items():
        path = directory / name
        if not path.exists():
            raise DataError(f"cached dataset file missing: {path}", hint=f"delete {directory} to regenerate it")
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, expected]
        if stamps.get(name) == stamp:
            continue
        if file_digest(path) != expected:
            raise DataError(
                f"cached dataset file {path} does not match its recorded digest (corrupt or edited)",
                hint=f"delete {directory}; it is regenerated on the next run",
            )
        stamps[name] = stamp
        changed = True
    if changed:
        try:
            tmp = stamp_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stamps))
            os.replace(tmp, stamp_path)
        except OSError:
            pass  # a read-only cache is still usable; it is just verified again next time
