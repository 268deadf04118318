"""PAL's per-step floor on this CPU against PAL's own training step.

    python benchmarks/pal_floor.py --steps 300 --repeats 5

The floor is the least work one of PAL's training steps can do: forward and backward of the
official projector (Linear(D, 512) → GELU → Linear(512, 512) → GELU → Linear(512, 512), 2.6 M
parameters at D = 4,096) on one batch of 4 pairs (8 item rows + K = 2 prototype rows), written as
plain torch autograd with preallocated inputs, then one fused ``torch.optim.Adam`` step over all
its parameters — no data handling, no user weights, no Python work beyond the calls themselves.
Each piece is timed alone (median over ``--repeats`` blocks of ``--steps`` steps, one torch
thread, as PAL runs) and together.

PAL's own step is then timed the same way: ``_PALBase._train_epochs`` on synthetic-prism's
seed-0 split (643 seen users, 5,220 pairs), for ``--pal-epochs`` epochs, divided by the number of
steps (the wall time of fit minus its set-up is not separated: fit includes building the model and
reading features, a few hundred ms). Prints JSON lines and the ratio PAL step ÷ floor step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def _median_ms(fn, steps: int, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        out.append((time.perf_counter() - t0) / steps * 1e3)
    return statistics.median(out)


def floor(args) -> dict:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    D, w, K, B = args.dim, 512, 2, 4
    f = nn.Sequential(nn.Linear(D, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, w))
    n_params = sum(p.numel() for p in f.parameters())
    P = torch.randn(K, D, requires_grad=True)
    x = torch.randn(2 * B, D)
    u = torch.randn(B, w)
    params = list(f.parameters()) + [P]
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)

    def fwd_bwd():
        for p in params:
            p.grad = None
        h = f(torch.cat([x, P]))
        m = torch.linalg.norm(h[B : 2 * B] - u, dim=-1) - torch.linalg.norm(h[:B] - u, dim=-1)
        torch.relu(1 - m).mean().backward()

    fwd_bwd()
    t_fb = _median_ms(fwd_bwd, args.steps, args.repeats)
    t_adam = _median_ms(opt.step, args.steps, args.repeats)

    def full():
        fwd_bwd()
        opt.step()

    t_full = _median_ms(full, args.steps, args.repeats)
    return {"floor": True, "params": n_params, "fwd_bwd_ms": round(t_fb, 3), "adam_ms": round(t_adam, 3),
            "step_ms": round(t_full, 3), "load": round(os.getloadavg()[0], 2)}


def pal_step(args) -> dict:
    from bench.config import resolve_params
    from bench.datasets import load_dataset
    from bench.registry import load_method
    from bench.runner import make_context, pair_view
    from bench.splits import make_split

    ds = load_dataset("synthetic-prism")
    split = make_split(ds, 0)
    ctx = make_context(ds, 0)
    train = pair_view(ds, split, split.budget_mask(None, 0) & split.seen[split.user_index])
    cls = load_method("pal")
    kw = resolve_params(cls, ds.family, {"epochs": args.pal_epochs})
    m = cls(**kw)
    t0 = time.perf_counter()
    m.fit(train, ctx)
    wall = time.perf_counter() - t0
    n_fit = len(train) - (0 if kw.get("val_fraction", 0) == 0 else int(len(train) * kw["val_fraction"]))
    steps = args.pal_epochs * -(-n_fit // int(kw["batch_size"]))
    return {"pal": True, "epochs": args.pal_epochs, "pairs": len(train), "steps": steps, "fit_s": round(wall, 2),
            "step_ms": round(wall / steps * 1e3, 3), "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--pal-epochs", type=int, default=1, help="epochs of PAL's own fit to time (0: skip)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    fl = floor(args)
    print(json.dumps(fl), flush=True)
    if args.pal_epochs > 0:
        pal = pal_step(args)
        print(json.dumps(pal), flush=True)
        print(json.dumps({"summary": True, "floor_step_ms": fl["step_ms"], "pal_step_ms": pal["step_ms"],
                          "ratio": round(pal["step_ms"] / fl["step_ms"], 2)}), flush=True)


if __name__ == "__main__":
    main()
