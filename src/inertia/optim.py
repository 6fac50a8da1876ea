"""`InertiaSGD`: the conformal-symplectic heavy ball with an energy brake (docs/theory.md §3–4).

Each step, with h = sqrt(lr·s) (s ∈ (0, 1], the brake's step scale) and velocity p = Δθ/h:

    p_{k+1} = μ p_k − h g_k,    θ_{k+1} = θ_k + h p_{k+1},    g = ∇L + wd·θ

the friction flow solved exactly over the step (p ← e^{−γh} p, μ = e^{−γh}) then a kick and a
drift: conformal symplectic Euler of θ̈ + γθ̇ + ∇L = 0. It is SGD with momentum whose velocity
is kept in physical units, so K = ½‖p‖² carries over unchanged when a scheduler changes lr.

The shadow energy H̃_k = ½‖p_k‖² + L(θ_k) − ½h⟨p_k, g_k⟩ (conserved exactly by the frictionless
step on a quadratic, docs/theory.md §4) changes over the step by

    ΔH̃_k = −½(1 − μ)⟨p_k, p_k + p_{k+1}⟩ = −½(1 − μ)((1 + μ)‖p_k‖² − h⟨p_k, g_k⟩),

exactly on a quadratic (ΔL by the trapezoid rule, O(h³) otherwise). It needs no loss and no
closure, and it is known before the step is taken. A stable step dissipates; above the
heavy-ball threshold h²λ_max > 2(1 + μ) the unstable mode makes H̃ rise.

The brake (FIRE-like): the rises are summed since the lowest point E_min reached since the
last brake; when the step would lift H̃ more than `tolerance`·(1 − μ)·K_k above E_min (the
allowance for gradient noise and the trapezoid error, in units of one step's friction), the
velocity is zeroed (a restart: p_k ← 0, that step is a gradient step from rest) and s ← s·
`decrease`. After `patience` steps without a brake s grows by `increase` per step back to 1,
so the scheduler's lr is followed again once the rise has stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import Tensor

from . import _checks
from ._distributed import local
from .reporting import EnergyReport

# The bounds of each group's numbers (`_checks.real` keywords): checked as a group is added.
_BOUNDS: dict[str, dict[str, Any]] = {
    "lr": {"low": 0.0},
    "momentum": {"low": 0.0, "high": 1.0, "strict_high": True},
    "weight_decay": {"low": 0.0},
    "tolerance": {"low": 0.0},
    "decrease": {"low": 0.0, "strict": True, "high": 1.0, "strict_high": True},
    "increase": {"low": 1.0},
    "min_scale": {"low": 0.0, "strict": True, "high": 1.0},
}


class _Flat:
    """The velocities of one (device, dtype) bucket of a group's parameters (their local
    shards under FSDP2) as one flat buffer, whose views are the optimizer state, with a scratch
    buffer for the gradients: the step's two inner products are two dots, its update two
    flat kernels."""

    def __init__(self, params: list[Tensor], velocities: list[Tensor]):
        self.params = params
        self.sharded = any(local(p) is not p for p in params)
        shards = [local(p) for p in params]
        sizes = [t.numel() for t in shards]
        like = shards[0]
        self.velocity = torch.zeros(sum(sizes), dtype=like.dtype, device=like.device)
        self.grad = torch.empty_like(self.velocity)
        self.velocity_views = [
            v.view(t.shape) for v, t in zip(torch.split(self.velocity, sizes), shards, strict=True)
        ]
        self.grad_views = [
            v.view(t.shape) for v, t in zip(torch.split(self.grad, sizes), shards, strict=True)
        ]
        torch._foreach_copy_(self.velocity_views, velocities)

    def shards(self) -> list[Tensor]:
        """The parameters' local shards (fetched each step: FSDP2 may swap them)."""
        return [local(p) for p in self.params] if self.sharded else self.params


def _grad(p: Tensor) -> Tensor:
    """The gradient of a parameter a bucket holds (buckets hold only parameters with one)."""
    assert p.grad is not None
    return p.grad


class InertiaSGD(torch.optim.Optimizer):
    """Heavy ball p ← μp − h(∇L + wd θ), θ ← θ + hp with h = sqrt(lr·scale), and an energy brake.

    Args:
        params: parameters or parameter groups (each group may set lr, momentum, weight_decay,
            restart, tolerance).
        lr: learning rate η = h² (the step scale s multiplies it while the brake acts).
        momentum: μ = e^{−γh} ∈ [0, 1), the exact friction factor of one step.
        restart: use the energy brake; without it this is SGD with momentum (velocity in
            physical units).
        weight_decay: wd, coupled: the potential is L + (wd/2)‖θ‖².
        tolerance: the allowed rise of the shadow energy above its lowest point since the last
            brake, in units of one step's friction (1 − μ)·K.
        decrease: factor on the step scale at each brake, in (0, 1).
        increase: factor per step on the step scale while it recovers, ≥ 1.
        patience: steps without a brake before the step scale recovers.
        min_scale: the step scale never drops below this.

    After each step, ``optimizer.state[p]`` holds the velocity and each group holds its ledger:
    ``h`` (the step taken), ``scale``, ``braked`` (whether this step restarted), ``brakes`` (a
    count), ``kinetic`` ½‖p_k‖² before the step, ``power`` ⟨p_k, g_k⟩, ``theta_sq`` ‖θ_k‖² (with
    weight decay), ``h_before`` the h that produced p_k, ``rise`` the step's ΔH̃ and ``energy``
    Σ ΔH̃ since the last brake (``lowest`` its minimum). `energy_report()` hands the step's map
    and energies to `InertiaMonitor` as typed `EnergyReport`s (`inertia.reporting.ReportsEnergy`),
    which books its rows from them with no pass of its own over the parameters.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        momentum: float = 0.9,
        *,
        restart: bool = True,
        weight_decay: float = 0.0,
        tolerance: float = 0.25,
        decrease: float = 0.5,
        increase: float = 1.1,
        patience: int = 5,
        min_scale: float = 1e-4,
    ):
        if isinstance(params, Tensor | dict | str) or not isinstance(params, Iterable):
            raise _checks.fail("params", "an iterable of tensors or of parameter groups", params)
        groups: list[Any] = list(params)
        if not groups:
            raise ValueError("params: the optimizer got an empty parameter list")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "restart": restart,
            "weight_decay": weight_decay,
            "tolerance": tolerance,
            "decrease": decrease,
            "increase": increase,
            "patience": patience,
            "min_scale": min_scale,
        }
        self._flats: dict[int, tuple[tuple[int, ...], list[_Flat]]] = {}
        super().__init__(groups, defaults)  # checks each group in add_param_group

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, plus each group's checks (before it is added: ValueError naming the
        bad entry) and its brake's state."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise _checks.fail("param_group", "a dict with 'params'", param_group)
        checked: dict[str, Any] = {
            key: _checks.real(key, param_group.get(key, self.defaults[key]), **bounds)
            for key, bounds in _BOUNDS.items()
        }
        patience = param_group.get("patience", self.defaults["patience"])
        checked["patience"] = _checks.integer("patience", patience, low=0)
        checked["restart"] = _checks.boolean(
            "restart", param_group.get("restart", self.defaults["restart"])
        )
        params = param_group["params"]
        if isinstance(params, set | str | dict) or not isinstance(params, Tensor | Iterable):
            raise _checks.fail("params", "a tensor or a list of tensors", params)
        tensors = [params] if isinstance(params, Tensor) else list(params)
        if not tensors or not all(isinstance(p, Tensor) and p.is_floating_point() for p in tensors):
            raise _checks.fail("params", "a non-empty list of floating-point tensors", tensors)
        try:
            super().add_param_group({**param_group, **checked, "params": tensors})
        except (TypeError, ValueError) as err:  # torch's: a non-leaf tensor, one in two groups
            raise ValueError(f"params: {err}") from None
        group = self.param_groups[-1]
        h = math.sqrt(group["lr"])
        for key, value in (
            ("scale", 1.0),
            ("calm", 0),
            ("energy", 0.0),
            ("lowest", 0.0),
            ("brakes", 0),
            ("braked", False),
            ("h", h),
            ("h_before", h),
            ("kinetic", 0.0),
            ("rise", 0.0),
            ("power", 0.0),
            ("theta_sq", 0.0),
        ):
            group.setdefault(key, value)

    def energy_report(self) -> list[EnergyReport]:
        """Each group's last step: h, μ (0 where the brake restarted it), wd and the energies of
        the point it started from (`inertia.reporting.EnergyReport`)."""
        return [
            EnergyReport(
                lr=float(g.get("rate", g["h"] * g["h"])),  # h² of a state from before "rate"
                h=float(g["h"]),
                momentum=0.0 if g["braked"] else float(g["momentum"]),
                weight_decay=float(g["weight_decay"]),
                kinetic=float(g["kinetic"]),
                power=float(g["power"]),
                theta_sq=float(g["theta_sq"]),
                h_before=float(g["h_before"]),
            )
            for g in self.param_groups
        ]

    @torch.no_grad()
    def kinetic_energy(self) -> list[float]:
        """½‖p‖² of each group's current velocity (summed over FSDP2 shards)."""
        out = []
        for group in self.param_groups:
            velocities = [self.state[p]["velocity"] for p in group["params"] if p in self.state]
            norms = torch._foreach_norm(velocities, 2) if velocities else []
            total = (
                torch.stack([n.double() ** 2 for n in norms]).sum() if norms else torch.zeros(())
            )
            if any(local(p) is not p for p in group["params"]):
                torch.distributed.all_reduce(total)
            out.append(0.5 * float(total))
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flats.clear()  # the loaded velocities are new tensors: rebuild the flat buffers

    def _buckets(self, index: int, group: dict[str, Any]) -> list[_Flat]:
        """Flat buffers over the group's parameters that have a gradient, rebuilt when that set
        changes (a parameter without a gradient keeps its velocity and does not move)."""
        live = [p for p in group["params"] if p.grad is not None]
        key = tuple(id(p) for p in live)
        cached = self._flats.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in live:
            if p.grad.is_sparse:
                raise ValueError("InertiaSGD does not support sparse gradients")
            by_kind.setdefault((p.device, p.dtype), []).append(p)
        if cached is not None:  # detach the old views from the old flat buffers
            for flat in cached[1]:
                for p, v in zip(flat.params, flat.velocity_views, strict=True):
                    self.state[p]["velocity"] = v.clone()
        flats = []
        for params in by_kind.values():
            velocities = [self.state[p].get("velocity", torch.zeros_like(local(p))) for p in params]
            flat = _Flat(params, velocities)
            for p, v in zip(params, flat.velocity_views, strict=True):
                self.state[p]["velocity"] = v
            flats.append(flat)
        self._flats[index] = (key, flats)
        return flats

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step; `closure` (optional) re-evaluates the loss, as for any optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            flats = self._buckets(index, group)
            if not flats:
                continue
            mu, wd = group["momentum"], group["weight_decay"]
            rate = group["lr"] * group["scale"]  # the step's learning rate, h²
            h = math.sqrt(rate)
            shards = [flat.shards() for flat in flats]
            for flat, params in zip(flats, shards, strict=True):
                torch._foreach_copy_(flat.grad_views, [local(_grad(p)) for p in flat.params])
                if wd:
                    torch._foreach_add_(flat.grad_views, params, alpha=wd)
            sums = [f.velocity.dot(f.velocity) for f in flats] + [
                f.velocity.dot(f.grad) for f in flats
            ]
            if wd:  # ‖θ‖² for the monitor's potential L + (wd/2)‖θ‖²
                norms = torch._foreach_norm([local(p) for p in group["params"]], 2)
                sums += torch._foreach_pow(norms, 2)
            dots = torch.stack([x.double() for x in sums])
            if any(f.sharded for f in flats):  # FSDP2: the norms are sums over the shards
                torch.distributed.all_reduce(dots)
            n = len(flats)
            pp, pg = float(dots[:n].sum()), float(dots[n : 2 * n].sum())
            rise = -0.5 * (1.0 - mu) * ((1.0 + mu) * pp - h * pg)  # ΔH̃ of this step
            # the step's report, read by InertiaMonitor: K of θ_k, ⟨p_k, g_k⟩ and ‖θ_k‖²
            group["kinetic"], group["power"], group["rise"] = 0.5 * pp, pg, rise
            group["theta_sq"] = float(dots[2 * n :].sum()) if wd else 0.0
            group["h_before"] = group["h"]  # the h that produced p_k
            brake = (
                group["restart"]
                and pp > 0
                and group["energy"] + rise - group["lowest"]
                > group["tolerance"] * (1.0 - mu) * 0.5 * pp
            )
            group["braked"] = brake
            if brake:  # restart: this step starts from rest, so its ΔH̃ is 0
                group["energy"] = group["lowest"] = 0.0
                group["brakes"] += 1
                group["calm"] = 0
                group["scale"] = max(group["scale"] * group["decrease"], group["min_scale"])
                rate = group["lr"] * group["scale"]
                h = math.sqrt(rate)
            else:
                group["energy"] += rise
                group["lowest"] = min(group["lowest"], group["energy"])
                group["calm"] += 1
                if group["calm"] > group["patience"]:
                    group["scale"] = min(1.0, group["scale"] * group["increase"])
            group["h"], group["rate"] = h, rate
            for flat, params in zip(flats, shards, strict=True):
                flat.velocity.mul_(0.0 if brake else mu).add_(flat.grad, alpha=-h)
                torch._foreach_add_(params, flat.velocity_views, alpha=h)
        return loss
