"""Training workloads shared by the benchmarks and the tests: runs with known answers or an
independent reference, built from code and generated data (no downloads).

- `regression`: linear regression with label noise, its exact least-squares minimum;
- `alarm_run`: heavy-ball steps under `InertiaMonitor(alarm=True)`, returning the first alarm
  and the step at which the loss first exceeds 10× its start;
- `regression_run`, `mlp_near_a_minimum`, `mlp_run`: the stability alarm's scenarios at a
  chosen factor of the heavy-ball threshold 2(1 + μ)/λ_max (λ_max exact for the quadratic,
  by Hessian-vector power iteration for the MLP), the unstable direction starting small.

Realistic runs (code and bundled data only):

- `stdlib_text`, `char_vocabulary`, `char_batches`: characters of the Python standard library's
  own sources, and random (input, next-character) windows of them;
- `CharTransformer`: a small GPT-style model (pre-LayerNorm blocks, causal self-attention by
  `scaled_dot_product_attention`, learned positions, tied head by default);
  `char_transformer_run`: it trained by AdamW with warmup, cosine decay and clipping under an
  `InertiaMonitor`;
- `digits_batches`, `digits_mlp`, `digits_cnn`: scikit-learn's bundled 8×8 digits, an MLP
  64-256-128-10 and a CNN (2 convolutions + linear).
"""

from __future__ import annotations

import math
import os
import re
import sysconfig
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp
from torch.nn import functional as F

from inertia import InertiaMonitor

F64 = torch.float64


def regression(n: int = 4000, d: int = 5, label_noise: float = 0.5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64) * torch.linspace(0.5, 1.0, d, dtype=F64)
    y = x @ torch.randn(d, generator=gen, dtype=F64) + label_noise * torch.randn(
        n, generator=gen, dtype=F64
    )
    best = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    return x, y, best


def full_loss(x, y, theta) -> float:
    return float(0.5 * ((x @ theta - y) ** 2).mean())


def alarm_run(opt, loss_at, steps, *, batch_loss=None, noise=None, alarm=True, seed=5, every=1):
    """Heavy-ball steps; returns the monitor, the first alarm row and the step after which the
    full loss first exceeds 10× its start (None if it never does)."""
    alarms = []
    monitor = InertiaMonitor(opt, alarm=alarm, noise=noise, on_alarm=alarms.append, every=every)
    start, blow_up = loss_at(), None
    gen = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(steps):
            opt.zero_grad()
            loss, per_sample = batch_loss(gen)
            monitor.observe(loss, per_sample=per_sample if noise else None)
            loss.backward()
            opt.step()
            now = loss_at()
            if blow_up is None and now > 10 * start:
                blow_up = k + 1
            if not math.isfinite(now) or now > 1e12:
                break
    return monitor, (alarms[0]["step"] if alarms else None), blow_up


def regression_run(mu, factor, steps, batch=None, seed=0, every=1, noise=None):
    """`alarm_run` on linear regression at `factor` × the heavy-ball threshold, the unstable
    direction starting small; the noise estimate per-sample with minibatches (`noise` to
    choose another)."""
    x, y, best = regression(seed=seed)
    lam, vecs = torch.linalg.eigh(x.T @ x / len(y))
    theta = torch.nn.Parameter(best + 2.0 * vecs[:, 0] + 1e-3 * vecs[:, -1])  # unstable: small
    opt = torch.optim.SGD([theta], lr=factor * 2 * (1 + mu) / float(lam.max()), momentum=mu)
    floor = full_loss(x, y, best)

    def batch_loss(gen):
        idx = torch.randint(0, len(y), (batch,), generator=gen) if batch else slice(None)
        per_sample = 0.5 * (x[idx] @ theta - y[idx]) ** 2
        return per_sample.mean(), per_sample

    return alarm_run(
        opt,
        lambda: full_loss(x, y, theta.detach()) - floor,
        steps,
        batch_loss=batch_loss,
        noise=noise or ("per_sample" if batch else None),
        seed=seed,
        every=every,
    )


def mlp_near_a_minimum(seed=0, n=1024):
    """A 4-16-1 tanh MLP fitted (Adam) to a noisy 4-8-1 teacher; λ_max and its eigenvector at
    the fit by power iteration on Hessian-vector products."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=F64)
    torch.manual_seed(seed)
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        y = teacher.double()(x) + 0.1 * torch.randn(n, 1, generator=gen, dtype=F64)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1500):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    star = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(v):
        return dict(zip(names, torch.split(v, [math.prod(s) for s in shapes]), strict=True))

    def loss(v):
        params = {k: t.view(s) for (k, t), s in zip(unflatten(v).items(), shapes, strict=True)}
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    v = torch.randn(star.shape, generator=gen, dtype=F64)
    for _ in range(200):
        hv = vjp(grad(loss), star)[1](v / v.norm())[0]  # H v, reverse over reverse
        lam, v = float((v / v.norm()) @ hv), hv
    return model, x, y, star, lam, v / v.norm()


def mlp_run(mlp, mu, factor, steps, batch=None, seed=0):
    model, x, y, star, lam, top = mlp
    gen = torch.Generator().manual_seed(11 + seed)
    kick = torch.randn(star.shape, generator=gen, dtype=F64)
    kick -= (kick @ top) * top
    start = star + 0.01 * kick / kick.norm() + 1e-4 * top  # the unstable direction: small
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(start, model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=factor * 2 * (1 + mu) / lam, momentum=mu)

    def loss_at():
        with torch.no_grad():
            return float(((model(x) - y) ** 2).mean())

    def batch_loss(g):
        idx = torch.randint(0, len(y), (batch,), generator=g) if batch else slice(None)
        per_sample = ((model(x[idx]) - y[idx]) ** 2).squeeze(1)
        return per_sample.mean(), per_sample

    return alarm_run(
        opt, loss_at, steps, batch_loss=batch_loss, noise="per_sample" if batch else None
    )


# --- Realistic runs: text from the standard library, a character transformer, digits ---------

_NOT_STDLIB = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests"})
_NOT_PLAIN = re.compile(r"[^\n\x20-\x7e]")  # plain ASCII: printable characters and newlines


def stdlib_text(chars: int) -> str:
    """The first `chars` characters of the standard library's own Python sources
    (`sysconfig.get_paths()["stdlib"]`: its top-level modules, then its packages, each folder's
    files and subfolders in sorted order; installed packages and test suites left out), with
    every character but printable ASCII and newlines dropped. The same text on every call."""
    if chars < 1:
        raise ValueError(f"chars: a positive number of characters, not {chars!r}")
    root = sysconfig.get_paths()["stdlib"]
    parts: list[str] = []
    total = 0
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _NOT_STDLIB)
        for name in sorted(f for f in files if f.endswith(".py")):
            source = Path(folder, name).read_text(encoding="utf-8", errors="ignore")
            parts.append(_NOT_PLAIN.sub("", source))
            total += len(parts[-1])
            if total >= chars:
                return "".join(parts)[:chars]
    raise ValueError(f"chars: the standard library at {root} has only {total} characters")


def char_vocabulary(text: str) -> str:
    """The distinct characters of `text`, sorted: character i has index i."""
    return "".join(sorted(set(text)))


def encode(text: str, vocab: str) -> Tensor:
    """The indices of `text`'s characters in `vocab` (int64)."""
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64)


def char_batches(
    text: str, vocab: str, batch: int, context: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless (x, y) of shape (batch, context): random windows of `text` as indices in
    `vocab`, and the same windows one character on (the next character to predict)."""
    data = encode(text, vocab)
    if len(data) <= context:
        raise ValueError(f"text: more than context = {context} characters, not {len(data)}")
    offsets = torch.arange(context + 1)
    while True:
        starts = torch.randint(0, len(data) - context, (batch,), generator=generator)
        window = data[starts[:, None] + offsets]
        yield window[:, :-1], window[:, 1:]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees positions ≤ t."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads: a divisor of d_model = {d_model}, not {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (GELU, 4×)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """A small GPT-style character model: token and learned position embeddings, `n_layers`
    pre-LayerNorm blocks, a final LayerNorm and a linear head (tied to the token embedding
    unless `tied=False`); weights N(0, 0.02), biases 0. `forward(x)`: logits (B, T, vocab)."""

    def __init__(
        self,
        vocab: str | Sequence[str],
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        context: int = 64,
        *,
        tied: bool = True,
    ) -> None:
        super().__init__()
        self.context = context
        self.token = nn.Embedding(len(vocab), d_model)
        self.position = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, len(vocab), bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if tied:
            self.head.weight = self.token.weight

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.context:
            raise ValueError(f"x: at most {self.context} positions, not {x.shape[1]}")
        h = self.token(x) + self.position(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def warmup_cosine(warmup: int, steps: int, floor: float = 0.1):
    """The learning-rate factor of step k: linear from 1/warmup to 1 over `warmup` steps, then
    a cosine down to `floor` at `steps`."""

    def factor(k: int) -> float:
        if k < warmup:
            return (k + 1) / warmup
        progress = min((k - warmup) / max(steps - warmup, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def char_transformer_run(
    steps: int = 300,
    *,
    log_dir: str | Path | None = None,
    seed: int = 0,
    batch: int = 16,
    context: int = 64,
    lr: float = 3e-3,
    warmup: int = 30,
    clip: float = 1.0,
    chars: int = 500_000,
    model_kwargs: dict[str, Any] | None = None,
    monitor_kwargs: dict[str, Any] | None = None,
) -> tuple[InertiaMonitor, CharTransformer, list[float]]:
    """`CharTransformer` on `stdlib_text(chars)` for `steps` steps of AdamW (β = (0.9, 0.95),
    weight decay 0.1 on matrices only, `warmup_cosine` schedule, gradients clipped to norm
    `clip`) under `InertiaMonitor(opt, log_dir=log_dir, **monitor_kwargs)` (given the model
    with `by="module"`); returns the monitor (attached), the model and the losses."""
    text = stdlib_text(chars)
    vocab = char_vocabulary(text)
    torch.manual_seed(seed)
    model = CharTransformer(vocab, context=context, **(model_kwargs or {}))
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, steps))
    kwargs = dict(monitor_kwargs or {})
    if kwargs.get("by") == "module":
        kwargs.setdefault("model", model)
    monitor = InertiaMonitor(opt, log_dir=log_dir, **kwargs)
    batches = char_batches(text, vocab, batch, context, torch.Generator().manual_seed(seed))
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        monitor.observe(loss)
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return monitor, model, losses


def digits_batches(batch: int, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless minibatches of scikit-learn's bundled 8×8 digits: images (batch, 1, 8, 8) in
    [0, 1] (float32) and labels, epochs of a seeded random permutation (the last partial
    batch of an epoch dropped)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    gen = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y) - batch + 1, batch):
            yield x[idx[start : start + batch]], y[idx[start : start + batch]]


def digits_mlp() -> nn.Module:
    """The MLP 64-256-128-10 (ReLU) of the digits benchmarks; takes images or flat rows."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def digits_cnn(width: int = 16) -> nn.Module:
    """Two 3×3 convolutions (width, 2·width channels), a 2×2 max-pool and a linear layer, for
    8×8 digits; also the CNN of benchmarks/optimizers.py (width 8)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 10),
    )
