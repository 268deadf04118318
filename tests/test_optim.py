import numpy as np
import torch

from bench.methods._optim import Adam


def test_numpy_adam_matches_torch_step_for_step():
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(50).astype(np.float32)
    grads = [rng.standard_normal(50).astype(np.float32) * 10 ** rng.uniform(-3, 1) for _ in range(200)]
    p_np = x0.copy()
    opt_np = Adam(p_np, lr=0.5)
    p_t = torch.tensor(x0, requires_grad=True)
    opt_t = torch.optim.Adam([p_t], lr=0.5)
    for g in grads:
        opt_np.step(g)
        p_t.grad = torch.tensor(g)
        opt_t.step()
    np.testing.assert_allclose(p_np, p_t.detach().numpy(), rtol=2e-5, atol=2e-5)
