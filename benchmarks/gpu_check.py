"""Checks for a machine with a CUDA GPU: run `python benchmarks/gpu_check.py` there.

One function per check, each returning `Check`s (a name, passed or not, what was measured);
the speed report prints path-steps per second and passes if it ran. Simulation:

- without noise the dynamics are deterministic: the CUDA ledger equals the CPU ledger to
  round-off (float64), and each closes;
- with noise CUDA draws from Philox and the CPU from the Mersenne Twister, so with the same
  seed and noise dtype the paths differ: the ensemble means of I agree within 4 standard
  errors with each other and with the exact law E[I](t) (docs/theory.md (2.4));
- the built-in systems run on the device (or say why not);
- path-steps per second on CUDA and on the CPU, float32 and float64 states.

Exits 0 when every check passes, 1 otherwise, and 0 with a message when there is no CUDA
device.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import NamedTuple

import torch

import inertia
from inertia import Dynamics, simulate, systems, theory
from inertia.simulate import resolve_device

CPU = torch.device("cpu")


class Check(NamedTuple):
    name: str
    passed: bool
    detail: str


class DeviceQuadratic(inertia.Potential):
    """L = ½ θᵀ diag(λ) θ with λ kept on the simulation's device and in its dtype."""

    def __init__(self, eigenvalues: torch.Tensor) -> None:
        self.eigenvalues = eigenvalues.double()
        self.dim = len(eigenvalues)
        self.minimum = 0.0
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _lam(self, q: torch.Tensor) -> torch.Tensor:
        key = (q.device, q.dtype)
        if key not in self._cache:
            self._cache[key] = self.eigenvalues.to(q.device, q.dtype)
        return self._cache[key]

    def value(self, q: torch.Tensor) -> torch.Tensor:
        return self.value_and_grad(q)[0]

    def value_and_grad(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = q * self._lam(q)
        return 0.5 * torch.linalg.vecdot(q, g), g


def relative_closure(tr: inertia.Trajectory) -> float:
    return float(tr.ledger.closure_error().abs().max()) / float(tr.inertia.abs().max())


def check_deterministic_ledger(device: torch.device) -> list[Check]:
    """γ > 0, σ = 0, float64, a quadratic (linear dynamics: round-off is not amplified): CUDA
    and CPU give the same ledger to round-off."""
    dyn = Dynamics(DeviceQuadratic(torch.linspace(0.5, 8.0, 4)), gamma=0.3)
    q0 = torch.linspace(-1.7, 1.9, 4 * 64, dtype=torch.float64).reshape(64, 4)
    runs = {
        d: simulate(dyn, q0, dt=0.01, steps=2000, paths=64, device=d, record_every=20)
        for d in (CPU, device)
    }
    scale = float(runs[CPU].inertia.abs().max())
    gap = max(
        float((runs[device].ledger[name].cpu() - runs[CPU].ledger[name]).abs().max()) / scale
        for name in inertia.COLUMNS
    )
    closures = {d.type: relative_closure(tr) for d, tr in runs.items()}
    return [
        Check("no noise: CUDA ledger = CPU ledger", gap < 1e-10, f"max gap / max|I| = {gap:.2e}"),
        Check(
            "no noise: both ledgers close",
            max(closures.values()) < 1e-12,
            ", ".join(f"{k} {v:.1e}" for k, v in closures.items()),
        ),
    ]


def check_stochastic_means(device: torch.device, noise_dtype: torch.dtype) -> list[Check]:
    """Langevin on a quadratic, same seed and noise dtype on both devices: the means of I
    agree within 4 SE with each other and with the exact law; each ledger closes."""
    lam, gamma, sigma, paths = torch.tensor([1.0, 2.5, 4.0]), 0.5, 0.6, 20_000
    q0 = torch.tensor([1.2, -0.7, 0.4], dtype=torch.float64)
    dyn = Dynamics(DeviceQuadratic(lam), gamma=gamma, sigma=sigma)
    runs = {
        d: simulate(
            dyn,
            q0,
            dt=0.01,
            steps=600,
            paths=paths,
            seed=3,
            record_every=50,
            device=d,
            noise_dtype=noise_dtype,
        )
        for d in (CPU, device)
    }
    means = {d: tr.mean()["inertia"] for d, tr in runs.items()}
    gpu, cpu = means[device], means[CPU]
    between = (gpu.mean.cpu() - cpu.mean) / (gpu.stderr.cpu() ** 2 + cpu.stderr**2).sqrt()
    exact = theory.expected_inertia(torch.diag(lam), q0, [0, 0, 0], gamma, sigma, runs[CPU].t)
    to_law = (gpu.mean.cpu() - exact) / gpu.stderr.cpu()
    z_between, z_law = float(between[1:].abs().max()), float(to_law[1:].abs().max())
    closure = max(relative_closure(tr) for tr in runs.values())
    name = str(noise_dtype).removeprefix("torch.")
    return [
        Check(
            f"{name} draws: CUDA mean of I = CPU mean", z_between < 4, f"max |z| = {z_between:.2f}"
        ),
        Check(f"{name} draws: CUDA mean of I = exact law", z_law < 4, f"max |z| = {z_law:.2f}"),
        Check(f"{name} draws: ledgers close", closure < 1e-12, f"{closure:.1e} of max|I|"),
    ]


def check_systems_on_device(device: torch.device) -> list[Check]:
    """Every built-in system simulates 10 steps on the device."""
    checks = []
    for name in systems.NAMES:
        potential, q0 = systems.named(name, 4)
        try:
            simulate(
                Dynamics(potential, gamma=0.5, sigma=0.1), q0, dt=1e-3, steps=10, device=device
            )
        except (ValueError, RuntimeError) as err:
            checks.append(Check(f"systems '{name}' on {device}", False, str(err).splitlines()[0]))
        else:
            checks.append(Check(f"systems '{name}' on {device}", True, "ran"))
    return checks


def path_steps_per_second(
    device: torch.device, paths: int, dtype: torch.dtype, steps: int = 200
) -> float:
    dyn = Dynamics(DeviceQuadratic(torch.linspace(1.0, 4.0, 64)), gamma=1.0, sigma=0.5)
    q0 = torch.ones(64, dtype=torch.float64)

    def run() -> None:
        simulate(
            dyn,
            q0,
            dt=0.01,
            steps=steps,
            paths=paths,
            dtype=dtype,
            device=device,
            seed=0,
            record_every=steps,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()  # warm up
    start = time.perf_counter()
    run()
    return paths * steps / (time.perf_counter() - start)


def report_speed(device: torch.device, sizes: list[int]) -> list[Check]:
    """Path-steps per second, d = 64, BAOAB with the ledger, on the device and the CPU."""
    print("\n| paths | state | CUDA path-steps/s | CPU path-steps/s |\n|---|---|---|---|")
    for dtype in (torch.float32, torch.float64):
        for paths in sizes:
            gpu = path_steps_per_second(device, paths, dtype)
            cpu = path_steps_per_second(CPU, paths, dtype, steps=20) if paths <= 10**5 else math.nan
            name = str(dtype).removeprefix("torch.")
            print(f"| {paths:.0e} | {name} | {gpu:.3g} | {cpu:.3g} |", flush=True)
    return [Check("speed report", True, "printed above")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the CUDA device to check")
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6", help="path counts for the speed")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
        )
        return 0
    device = resolve_device(args.device, None)
    print(
        f"gpu_check on {torch.cuda.get_device_name(device)} ({device}), torch {torch.__version__}"
    )
    checks = [
        *check_deterministic_ledger(device),
        *check_stochastic_means(device, torch.float32),
        *check_stochastic_means(device, torch.float64),
        *check_systems_on_device(device),
        *report_speed(device, [int(float(x)) for x in args.sizes.split(",")]),
    ]
    print()
    for check in checks:
        print(f"{'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    failed = sum(not c.passed for c in checks)
    print(f"\n{failed} check(s) FAILED" if failed else "\nall checks pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
