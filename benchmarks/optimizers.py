"""InertiaSGD against the optimizers people would use instead, each with its learning rate tuned
on a small grid, 3 seeds per setting.

    python benchmarks/optimizers.py [--seeds 3] [--quick] [--write]

Tasks: an ill-conditioned quadratic and the Rosenbrock valley (steps to L − L* ≤ 1e-8), logistic
regression on scikit-learn's breast_cancer, an MLP and a small CNN on digits (test loss and
accuracy after a fixed budget of minibatch steps). The learning rate of each optimizer is the
grid value with the best mean over seeds (steps to the target; validation loss for the data
sets, never the test split). The table also counts the grid values at which every seed ran
without diverging. With --write the tables go to docs/optimizers.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.datasets import load_breast_cancer, load_digits

from inertia.optim import InertiaSGD
from monitor_overhead import cnn

ROOT = Path(__file__).resolve().parents[1]
MOMENTUM = 0.9
OPTIMIZERS: dict[str, Callable] = {
    "SGD momentum": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=MOMENTUM),
    "Nesterov": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=MOMENTUM, nesterov=True),
    "Adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
    "InertiaSGD": lambda ps, lr: InertiaSGD(ps, lr=lr, momentum=MOMENTUM),
}


@dataclass
class Task:
    name: str
    make: Callable[[int], Problem]  # seed → a fresh problem
    grid: list[float]  # learning rates for the SGD family
    adam_grid: list[float]
    steps: int
    target: float | None = None  # deterministic tasks: steps until loss − L* ≤ target


class Problem:
    """Parameters, a training loss per step and an evaluation."""

    params: list[torch.Tensor]

    def loss(self) -> torch.Tensor: ...

    def evaluate(self) -> dict[str, float]: ...


class Quadratic(Problem):
    """½ Σ λᵢ θᵢ², λ log-spaced in [1e-3, 1] in a random basis, random start: condition 1000."""

    def __init__(self, seed: int, dim: int = 100):
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        self.hessian = q @ torch.diag(torch.logspace(-3, 0, dim, dtype=torch.float64)) @ q.T
        self.theta = torch.nn.Parameter(torch.randn(dim, generator=gen, dtype=torch.float64))
        self.params = [self.theta]

    def loss(self):
        return 0.5 * self.theta @ self.hessian @ self.theta


class Rosenbrock(Problem):
    """(1 − x)² + 100(y − x²)², from (−1.2, 1) perturbed by N(0, 0.1²); minimum 0 at (1, 1)."""

    def __init__(self, seed: int):
        gen = torch.Generator().manual_seed(seed)
        start = torch.tensor([-1.2, 1.0], dtype=torch.float64)
        self.xy = torch.nn.Parameter(
            start + 0.1 * torch.randn(2, generator=gen, dtype=torch.float64)
        )
        self.params = [self.xy]

    def loss(self):
        x, y = self.xy
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def _split(x: torch.Tensor, y: torch.Tensor):
    """A fixed 60/20/20 train/validation/test split (the same for every seed)."""
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    return [(x[i], y[i]) for i in (idx[:a], idx[a:b], idx[b:])]


class Classification(Problem):
    """Minibatch training (batch 32, reshuffled every epoch by the seed) of `model` with the
    cross-entropy; evaluation on the validation and test splits."""

    def __init__(self, seed: int, data, model: Callable[[], torch.nn.Module], binary=False):
        (self.x, self.y), self.val, self.test = data
        torch.manual_seed(seed)
        self.model = model()
        self.params = list(self.model.parameters())
        self.binary = binary
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.at = torch.randperm(len(self.y), generator=self.gen), 0

    def _loss(self, x, y):
        out = self.model(x)
        if self.binary:
            return torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y)
        return torch.nn.functional.cross_entropy(out, y)

    def loss(self):
        if self.at + 32 > len(self.y):
            self.order, self.at = torch.randperm(len(self.y), generator=self.gen), 0
        idx = self.order[self.at : self.at + 32]
        self.at += 32
        return self._loss(self.x[idx], self.y[idx])

    @torch.no_grad()
    def evaluate(self):
        result = {}
        for name, (x, y) in (("val", self.val), ("test", self.test)):
            out = self.model(x)
            result[f"{name}_loss"] = float(self._loss(x, y))
            hit = (out.squeeze(1) > 0).float() == y if self.binary else out.argmax(1) == y
            result[f"{name}_acc"] = float(hit.float().mean())
        return result


def breast_cancer():
    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    return _split(x, torch.tensor(data.target, dtype=torch.float32))


def digits(images: bool):
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    x = x.unsqueeze(1) if images else x.flatten(1)
    return _split(x, torch.tensor(data.target))


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


SGD_GRID = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
ADAM_GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def tasks() -> list[Task]:
    cancer, flat, images = breast_cancer(), digits(False), digits(True)
    return [
        Task(
            "quadratic (d=100, κ=1000)",
            Quadratic,
            [0.25, 0.5, 1, 2, 4, 8],
            [*ADAM_GRID[2:], 0.1, 0.3],
            5000,
            1e-8,
        ),
        Task(
            "Rosenbrock",
            Rosenbrock,
            [1e-4 * 2**k for k in range(0, 12, 2)],
            [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3],
            10000,
            1e-8,
        ),
        Task(
            "logistic regression, breast_cancer",
            lambda s: Classification(s, cancer, lambda: torch.nn.Linear(30, 1), binary=True),
            SGD_GRID,
            ADAM_GRID,
            300,
        ),
        Task("MLP, digits", lambda s: Classification(s, flat, mlp), SGD_GRID, ADAM_GRID, 600),
        Task(
            "CNN, digits",
            lambda s: Classification(s, images, lambda: cnn(8)),
            SGD_GRID,
            ADAM_GRID,
            400,
        ),
    ]


def train(task: Task, optimizer: str, lr: float, seed: int) -> dict[str, float]:
    """One run: steps to the target (deterministic tasks) or the evaluation after the budget."""
    problem = task.make(seed)
    opt = OPTIMIZERS[optimizer](problem.params, lr)
    for step in range(task.steps):
        opt.zero_grad()
        loss = problem.loss()
        value = float(loss.detach())
        if not math.isfinite(value) or value > 1e12:
            return {"diverged": 1.0, "steps": math.inf, "val_loss": math.inf}
        if task.target is not None and value <= task.target:
            return {"diverged": 0.0, "steps": float(step)}
        loss.backward()
        opt.step()
    if task.target is not None:
        return {"diverged": 0.0, "steps": math.inf}
    result = problem.evaluate()
    return {"diverged": float(not math.isfinite(result["val_loss"])), **result}


def mean_std(values: list[float]) -> str:
    if not all(math.isfinite(v) for v in values):
        return "not reached" if not any(math.isfinite(v) for v in values) else "some not reached"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def _score(values: list[float]) -> float:
    """The mean over seeds; inf if any seed diverged or missed the target."""
    return statistics.mean(values) if all(math.isfinite(v) for v in values) else math.inf


def benchmark(task: Task, seeds: int) -> list[str]:
    """Tune each optimizer's lr on the grid; one Markdown table row per optimizer."""
    key = "steps" if task.target is not None else "val_loss"
    rows = []
    for name in OPTIMIZERS:
        grid = task.adam_grid if name == "Adam" else task.grid
        runs = {lr: [train(task, name, lr, s) for s in range(seeds)] for lr in grid}
        stable = sum(all(not r["diverged"] for r in rs) for rs in runs.values())

        best = min(grid, key=lambda lr, runs=runs: _score([r[key] for r in runs[lr]]))
        chosen = runs[best]
        if task.target is not None:
            cells = [mean_std([r["steps"] for r in chosen])]
        else:
            cells = [
                mean_std([r["test_loss"] for r in chosen]),
                mean_std([100 * r["test_acc"] for r in chosen]),
            ]
        rows.append(f"| {name} | {best:g} | {' | '.join(cells)} | {stable}/{len(grid)} |")
    return rows


def table(task: Task, seeds: int) -> str:
    if task.target is not None:
        head = (
            f"| optimizer | tuned lr | steps to L − L* ≤ {task.target:g} | lrs without divergence |"
        )
        rule = "|---|---|---|---|"
    else:
        head = "| optimizer | tuned lr | test loss | test accuracy (%) | lrs without divergence |"
        rule = "|---|---|---|---|---|"
    budget = f"budget {task.steps} steps"
    return "\n".join(
        [f"**{task.name}** ({budget}, {seeds} seeds)", "", head, rule, *benchmark(task, seeds)]
    )


def replace_between(text: str, marker: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"the page has no <!-- {marker} --> … <!-- /{marker} --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one seed, for a smoke run")
    parser.add_argument(
        "--write", action="store_true", help="write docs/optimizers.md and docs/benchmarks.md"
    )
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    start = time.perf_counter()
    tables = []
    for task in tasks():
        tables.append(table(task, seeds))
        print(tables[-1], "\n", flush=True)
    body = "\n\n".join(tables)
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.write:
        docs = ROOT / "docs" / "optimizers.md"
        text = docs.read_text()
        docs.write_text(replace_between(text, "tables", body))
        page = ROOT / "docs" / "benchmarks.md"
        page.write_text(replace_between(page.read_text(), "optimizers", body))


if __name__ == "__main__":
    main()
