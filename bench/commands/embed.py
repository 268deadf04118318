"""``bench embed``: extract reward-model features of a text dataset into the feature cache.

    bench embed --dataset reddit --model v2                 # Skywork/Skywork-Reward-V2-Llama-3.1-8B
    bench embed --dataset prism --model v1 --prompts        # + prompt-only features (PAL-B)
    bench embed --dataset reddit --model v2 --backend vllm  # vLLM's pooling runner (GPU)
    bench embed --dataset prism:data_dir=/data/prism --model smollm2 --dry-run
    bench embed --dataset reddit --model v2 --backend vllm --data-parallel 8      # 8 GPUs, one model each
    bench embed --dataset reddit --model v2 --backend vllm --ray-address auto --data-parallel 16

Prints the dataset summary (users, pairs, pairs per user, rows dropped and why) and the expected
cost, then extracts with a progress bar and ETA. Interrupt at any time: rerunning the same command
resumes at the first missing chunk.
"""

from __future__ import annotations

import time

from bench.errors import BenchError


def add_parser(sub) -> None:
    e = sub.add_parser("embed", help="extract reward-model features (+ RM logits) of a text dataset into the cache")
    e.add_argument("--dataset", required=True, help="a text dataset spec, e.g. reddit, prism:data_dir=DIR")
    e.add_argument("--model", default="v2", help="v2, v1, a Hub id, a local directory, a .gguf file, or smollm2 (offline stand-in)")
    e.add_argument("--revision", default=None, help="Hub revision of the model (default: the main branch)")
    e.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    e.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    e.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, float32 on CPU), bfloat16, float16, float32")
    e.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per batch (default 16384)")
    e.add_argument("--batch-size", type=int, default=64, help="texts per batch at most (default 64)")
    e.add_argument("--chunk", type=int, default=1024, help="texts per cache chunk (the unit of resume; default 1024)")
    e.add_argument("--prompts", action="store_true", help="also extract prompt-only features (the templated prompt alone; PAL-B)")
    e.add_argument("--check-samples", type=int, default=8, help="texts compared with the official one-at-a-time recipe (default 8)")
    e.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="vLLM only (default 0.5, leaving room for the check)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    e.add_argument("--force", action="store_true", help="recompute even if complete features are cached")
    e.add_argument("--trust-remote-code", action="store_true",
                   help="allow Python code shipped with the model checkpoint to run (off by default; recorded in the features' manifest)")
    g = e.add_argument_group("scale (see docs/scaling.md)")
    g.add_argument("--data-parallel", type=int, default=1, metavar="N",
                   help="N workers (one model copy each, own GPU(s)) split the texts chunk by chunk (default 1)")
    g.add_argument("--tensor-parallel", type=int, default=1, metavar="T",
                   help="vLLM: split each model copy over T GPUs (models too large for one GPU)")
    g.add_argument("--executor", choices=["local", "ray"], default=None, help="workers as local processes (default) or Ray tasks")
    g.add_argument("--ray-address", default=None, metavar="ADDR", help="run the workers on this Ray cluster (implies --executor ray)")
    e.add_argument("--dry-run", action="store_true", help="print the dataset summary and expected cost, extract nothing")
    e.set_defaults(handler=run)


def load_text_dataset(spec: str):
    """Load a registered text dataset without features (see :func:`bench.datasets.load_text_dataset`)."""
    from bench.datasets import load_text_dataset as load

    return load(spec)


def format_summary(ds) -> list[str]:
    s = ds.summary()
    lines = [
        f"{s['dataset']}: {s['users']:,} users, {s['pairs']:,} pairs ({s['pairs_per_user_mean']:.1f} per user, "
        f"min {s['pairs_per_user_min']}, max {s['pairs_per_user_max']}), {s['groups']:,} groups, "
        f"{s['responses']:,} distinct responses, {len(ds.prompts or {}):,} distinct prompts; split by {s['split_by']}",
        f"  source: {ds.meta.get('source', '?')}; fingerprint {ds.meta.get('text_fingerprint', ds.fingerprint)}",
    ]
    for why, n in (s.get("dropped") or {}).items():
        lines.append(f"  dropped {n:,}: {why}")
    for why, n in (ds.meta.get("notes") or {}).items():
        lines.append(f"  note {n:,}: {why}")
    return lines


def run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from bench.cli import _console
    from bench.features.cache import estimate_cost

    console = _console()
    ds = load_text_dataset(args.dataset)
    for line in format_summary(ds):
        console.print(line, markup=False)
    from bench.features.encoders import default_device

    device = args.device or default_device()
    if args.backend == "vllm":
        device = "cuda"
    cost = estimate_cost(ds, prompts=args.prompts, model=args.model, device=device, threads=args.threads)
    console.print(f"expected cost: {cost['summary']}", markup=False)
    if args.dry_run:
        return 0
    from bench.features.encoders import load_encoder
    from bench.features.extract import default_reference, extract_features

    if args.data_parallel < 1 or args.tensor_parallel < 1:
        raise BenchError("--data-parallel and --tensor-parallel must be ≥ 1")
    if args.tensor_parallel > 1 and args.backend != "vllm":
        raise BenchError("--tensor-parallel needs --backend vllm", hint="add --backend vllm (GPU), or drop --tensor-parallel")
    if args.data_parallel > 1 or args.executor == "ray" or args.ray_address:
        return _run_parallel(args, ds, device, console)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    enc = load_encoder(
        args.model,
        backend=args.backend,
        revision=args.revision,
        device=device,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel,
        trust_remote_code=args.trust_remote_code,
    )
    console.print(
        f"model {enc.identity.model} (revision {enc.identity.revision}, chat template {enc.identity.template_hash}, "
        f"hidden size {enc.dim}) via {enc.backend} on {device if args.backend == 'transformers' else getattr(enc, 'device_name', 'cuda')} "
        f"in {enc.dtype_name}, loaded in {time.perf_counter() - t:.0f} s",
        markup=False,
    )
    ref = default_reference(enc, args.model, args.revision)
    kinds = ["response"] + (["prompt"] if args.prompts else [])
    for kind in kinds:
        with Progress(
            TextColumn(f"[bold]{kind}s"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as prog:
            task = prog.add_task(kind, total=None, rate="")
            start = {"t": time.perf_counter(), "n": None}

            def progress(done: int, total: int) -> None:
                if start["n"] is None:
                    start["n"], start["t"] = done, time.perf_counter()
                dt = time.perf_counter() - start["t"]
                rate = f"{(done - start['n']) / dt:.1f} texts/s" if dt > 0 and done > start["n"] else ""
                prog.update(task, completed=done, total=max(total, 1), rate=rate)

            try:
                rep = extract_features(
                    ds,
                    enc,
                    kind=kind,
                    chunk_size=args.chunk,
                    batch_tokens=args.batch_tokens,
                    batch_size=args.batch_size,
                    check_samples=args.check_samples,
                    reference=ref,
                    force=args.force,
                    progress=progress,
                    log=lambda m: prog.console.print(m, markup=False, highlight=False),
                )
            except KeyboardInterrupt:
                prog.stop()
                console.print("interrupted: the chunks written so far are kept; rerun the same command to resume", markup=False)
                return 130
        if not rep["cached"]:
            rate = rep["embedded"] / rep["seconds"] if rep["seconds"] > 0 else float("nan")
            console.print(
                f"{kind}s: {rep['embedded']:,} texts ({rep['tokens']:,} tokens) in {rep['seconds']:.1f} s "
                f"({rate:.1f} texts/s); {rep['items']:,} distinct texts in all",
                markup=False,
            )
    console.print(f"features cached in {rep['directory']}", markup=False)
    from bench.datasets.textdata import DEFAULT_FEATURE_MODEL, feature_model_name

    spec = ds.meta.get("spec", ds.name)
    if feature_model_name(args.model) != DEFAULT_FEATURE_MODEL:
        spec += ("," if ":" in spec else ":") + f"features={args.model}"
    console.print(f"next: bench run --dataset {spec} --methods all", markup=False)
    enc.close()
    return 0


def _run_parallel(args, ds, device: str, console) -> int:
    """``--data-parallel N`` / Ray: N workers split the chunks; print what each embedded."""
    from bench.executors import threads_per_worker
    from bench.features.parallel import extract_parallel

    kinds = ["response"] + (["prompt"] if args.prompts else [])
    model = {
        "name": args.model, "backend": args.backend, "revision": args.revision, "device": device, "dtype": args.dtype,
        "gpu_memory_utilization": args.gpu_memory_utilization, "tensor_parallel_size": args.tensor_parallel,
        "trust_remote_code": args.trust_remote_code,
    }
    extract = {
        "chunk_size": args.chunk, "batch_tokens": args.batch_tokens, "batch_size": args.batch_size,
        "check_samples": args.check_samples, "force": args.force,
    }
    threads = args.threads or (threads_per_worker(args.data_parallel, None) if device == "cpu" else None)
    where = f"Ray ({args.ray_address or 'local'})" if (args.executor == "ray" or args.ray_address) else "local processes"
    console.print(f"{args.data_parallel} workers on {where}" + (f", {args.tensor_parallel} GPUs each" if args.tensor_parallel > 1 else ""), markup=False)
    t = time.perf_counter()
    try:
        reports = extract_parallel(args.dataset, model, kinds, args.data_parallel, extract,
                                   executor=args.executor or "local", ray_address=args.ray_address,
                                   tensor_parallel=args.tensor_parallel, threads=threads)
    except KeyboardInterrupt:
        console.print("interrupted: the chunks written so far are kept; rerun the same command to resume", markup=False)
        return 130
    for r in reports:
        if not r.get("cached"):
            console.print(f"  {r.get('worker', '?')}: {r['embedded']:,} texts ({r.get('tokens', 0):,} tokens) in {r['seconds']:.1f} s", markup=False)
    total = sum(r["embedded"] for r in reports)
    console.print(f"{total:,} texts embedded by {args.data_parallel} workers in {time.perf_counter() - t:.1f} s", markup=False)
    console.print(f"features cached in {reports[0]['directory']}", markup=False)
    return 0
