"""The alarm's minibatch curvature from Hessian-vector products (`inertia.monitor.curvature`):
the Rayleigh–Ritz value of the batch Hessian over span(step, x̂, H x̂) against the Hessian
computed whole by `torch.func.hessian`, the per-sample variance against per-sample Hessians,
and the tracking: on a fixed quadratic λ̂ never decreases and climbs to λ_max."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.func import functional_call, jacrev

from inertia import InertiaMonitor
from inertia.monitor.curvature import TopCurvature

F64 = torch.float64


def ritz(h: torch.Tensor, vectors: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """The top Ritz pair of symmetric h over span(vectors), independently (QR, eigh)."""
    basis = torch.linalg.qr(torch.stack(vectors, 1))[0]
    values, vecs = torch.linalg.eigh(basis.T @ h @ basis)
    return float(values[-1]), basis @ vecs[:, -1]


def tanh_mlp(seed: int = 0, n: int = 48):
    """A 3-5-1 tanh regression MLP in two parameter groups, with its data."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    model = model.double()
    x = torch.randn(n, 3, generator=gen, dtype=F64)
    y = torch.randn(n, 1, generator=gen, dtype=F64)
    params = list(model.parameters())
    groups = [params[:2], params[2:]]
    return model, x, y, groups


def flat_loss(model, x, y):
    """θ ↦ per-sample losses of `model` at the flat parameters θ."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def losses(theta):
        parts = torch.split(theta, [math.prod(s) for s in shapes])
        params = {k: t.view(s) for k, t, s in zip(names, parts, shapes, strict=True)}
        return ((functional_call(model, params, (x,)) - y) ** 2).squeeze(1)

    return losses


def hessian(f):
    """Reverse over reverse (forward mode loads the deprecated torch.jit.script)."""
    return jacrev(jacrev(f))


def split(groups, vector: torch.Tensor) -> list[torch.Tensor]:
    sizes = [sum(p.numel() for p in g) for g in groups]
    return list(vector.split(sizes))


def test_ritz_value_and_variance_match_the_whole_hessian_over_three_rows():
    """Row 1 spans the step; rows 2 and 3 span (step, x̂, H x̂) of the row before, with H that
    row's batch Hessian. λ̂ is the top Ritz value of this row's batch Hessian over that span and
    the variance is Var_i(x̂ᵀHᵢx̂)/B along its maximiser, to round-off."""
    model, x, y, groups = tanh_mlp()
    losses_at = flat_loss(model, x, y)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    top = TopCurvature(groups)
    gen = torch.Generator().manual_seed(1)
    span: list[torch.Tensor] = []
    for _ in range(3):
        step = torch.randn(theta.shape, generator=gen, dtype=F64)
        h = hessian(lambda t: losses_at(t).mean())(theta)
        expected, x_hat = ritz(h, [step, *span])
        per_sample = torch.stack(
            [hessian(lambda t, i=i: losses_at(t)[i])(theta) for i in range(len(y))]
        )
        variance = float(torch.einsum("a,iab,b->i", x_hat, per_sample, x_hat).var()) / len(y)
        value, spread = top.measure(((model(x) - y) ** 2).squeeze(1), split(groups, step))
        assert value == pytest.approx(expected, rel=1e-10)
        assert spread == pytest.approx(variance, rel=1e-8)
        span = [x_hat, h @ x_hat]
        with torch.no_grad():  # the next row: other parameters, the same span to carry
            theta = theta + 0.05 * torch.randn(theta.shape, generator=gen, dtype=F64)
            torch.nn.utils.vector_to_parameters(theta, model.parameters())


def test_on_a_fixed_quadratic_the_value_climbs_to_the_top_eigenvalue():
    """Least squares with the same batch each row: H is fixed, so λ̂ is a Ritz value over a
    span that keeps the last maximiser: it never decreases and never exceeds λ_max, and with
    H x̂ in the span it converges like a power iteration, here within 40 rows from steps that
    barely touch the top direction."""
    gen = torch.Generator().manual_seed(2)
    d = 12
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    lam = torch.linspace(0.1, 1.0, d, dtype=F64)
    x = torch.randn(400, d, generator=gen, dtype=F64) @ q @ torch.diag(lam.sqrt()) @ q.T
    lam_max = float(torch.linalg.eigvalsh(x.T @ x / len(x))[-1])
    theta = torch.nn.Parameter(torch.zeros(d, dtype=F64))
    top = TopCurvature([[theta]])
    values = []
    for _ in range(40):
        step = torch.randn(d, generator=gen, dtype=F64) * lam.flip(0)  # the top direction: small
        values.append(top.measure(0.5 * (x @ theta) ** 2, [q @ step])[0])
    assert all(b >= a * (1 - 1e-12) for a, b in itertools.pairwise(values))
    assert max(values) <= lam_max * (1 + 1e-12)
    assert values[0] < 0.9 * lam_max
    assert values[-1] == pytest.approx(lam_max, rel=1e-8)


def test_a_loss_without_curvature_reads_zero_and_a_zero_step_nan():
    theta = torch.nn.Parameter(torch.ones(3, dtype=F64))
    x = torch.randn(8, 3, dtype=F64)
    top = TopCurvature([[theta]])
    assert top.measure(x @ theta, [torch.ones(3, dtype=F64)]) == (0.0, 0.0)
    fresh = TopCurvature([[theta]])
    value, spread = fresh.measure(0.5 * (x @ theta) ** 2, [torch.zeros(3, dtype=F64)])
    assert math.isnan(value) and math.isnan(spread)


class Attention(torch.nn.Module):
    """One causal head of `scaled_dot_product_attention` over 5 positions, then a linear read."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(4, 12)
        self.read = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (B, 1 head, T, 4) each
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.read(y.squeeze(1)).mean(1)


def test_a_fused_attention_kernel_falls_back_to_the_math_kernel():
    """The fused CPU kernel has no double backward: the first measurement through it is NaN
    with one warning and switches attention to the math kernel; the next forward's value is
    the top Ritz value of the whole batch Hessian over the step, to round-off; `restore`
    gives the fused kernel back (and a failure that is not attention's is raised)."""
    torch.manual_seed(0)
    model = Attention().double()
    x, y = torch.randn(12, 5, 4, dtype=F64), torch.randn(12, 1, dtype=F64)
    groups = [list(model.parameters())]
    top = TopCurvature(groups)
    step = torch.randn(sum(p.numel() for p in model.parameters()), dtype=F64)
    with pytest.warns(RuntimeWarning, match="math kernel"):
        value, spread = top.measure(((model(x) - y) ** 2).squeeze(1), [step])
    assert math.isnan(value) and math.isnan(spread) and top.attention.enabled
    assert not torch.backends.cuda.flash_sdp_enabled()
    value, _ = top.measure(((model(x) - y) ** 2).squeeze(1), [step])
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    expected, _ = ritz(hessian(lambda t: flat_loss(model, x, y)(t).mean())(theta), [step])
    assert value == pytest.approx(expected, rel=1e-10)
    top.attention.restore()
    assert torch.backends.cuda.flash_sdp_enabled() and not top.attention.enabled


def test_the_monitor_measures_attention_models_and_gives_the_kernels_back():
    """`noise="per_sample"` with the alarm on an attention model: one warning, the margin
    measured from the row after the fallback on, and the fused kernel back after `detach`."""
    torch.manual_seed(0)
    model = Attention().double()
    x, y = torch.randn(12, 5, 4, dtype=F64), torch.randn(12, 1, dtype=F64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt, noise="per_sample", alarm=True)
    with pytest.warns(RuntimeWarning, match="math kernel") as caught:
        for _ in range(5):
            opt.zero_grad()
            losses = ((model(x) - y) ** 2).squeeze(1)
            monitor.observe(losses.mean(), per_sample=losses)
            losses.mean().backward()
            opt.step()
    assert len([w for w in caught if "math kernel" in str(w.message)]) == 1
    margin = monitor.ledger["margin"]
    assert bool(margin[2:].isfinite().all()) and float(margin[2:].min()) > 0, margin
    monitor.detach()
    assert torch.backends.cuda.flash_sdp_enabled()
