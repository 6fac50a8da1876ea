"""The `inertia` command: parse, call the library, print.

    inertia demo [--out DIR] [--quick] [--seed N]
    inertia simulate --system NAME [--dim D] [--gamma G] [--sigma S] [--mass M] [--dt H]
                     [--steps N] [--method M] [--paths P] [--seed N] [--record-every K]
                     [--device DEV] [--out DIR] [--json]
    inertia report LEDGER.csv [--out DIR]

Wrong input exits with status 2 and one line on stderr; a failed check (demo) or a blow-up
(simulate) exits with status 1. Under torchrun (WORLD_SIZE > 1), `simulate` shards its paths
over the ranks (gloo, or NCCL with --device cuda); rank 0 prints and writes the pooled results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from . import __version__


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from .integrators import METHODS
    from .systems import NAMES

    parser = _Parser(
        prog="inertia",
        description="Computational inertia I = ½‖θ̇‖² + L(θ) of learning dynamics: simulate, "
        "check against the exact laws, report.",
    )
    parser.add_argument("--version", action="version", version=f"inertia {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="reproduce the paper's demonstration (figures, report)")
    demo.add_argument("--out", type=Path, default=Path("inertia-demo"), help="output folder")
    demo.add_argument("--quick", action="store_true", help="smaller runs (about 10 s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    sim = commands.add_parser("simulate", help="simulate one system and write its energy ledger")
    sim.add_argument(
        "--system", required=True, choices=NAMES, metavar="NAME", help=f"one of {', '.join(NAMES)}"
    )
    sim.add_argument("--dim", type=int, default=2, help="dimension (default 2)")
    sim.add_argument("--gamma", type=float, default=0.0, help="friction γ ≥ 0 (default 0)")
    sim.add_argument("--sigma", type=float, default=0.0, help="noise σ ≥ 0 (default 0)")
    sim.add_argument("--mass", type=float, default=1.0, help="mass m > 0 (default 1)")
    sim.add_argument("--dt", type=float, default=0.01, help="step h > 0 (default 0.01)")
    sim.add_argument("--steps", type=int, default=1000, help="number of steps (default 1000)")
    sim.add_argument(
        "--method",
        default="auto",
        choices=("auto", *METHODS),
        metavar="METHOD",
        help=f"auto or one of {', '.join(METHODS)}",
    )
    sim.add_argument("--paths", type=int, default=1, help="independent paths (default 1)")
    sim.add_argument("--seed", type=int, default=None, help="random seed")
    sim.add_argument("--record-every", type=int, default=1, help="record every K steps")
    sim.add_argument(
        "--device",
        default=None,
        help="where to simulate: cpu (default), cuda, cuda:N; under torchrun, cuda is each "
        "rank's LOCAL_RANK device",
    )
    sim.add_argument("--out", type=Path, default=Path("inertia-simulate"), help="output folder")
    sim.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    rep = commands.add_parser("report", help="figures and an HTML report of a ledger CSV")
    rep.add_argument(
        "ledger",
        type=Path,
        metavar="LEDGER.csv",
        help="a ledger from InertiaMonitor (log_dir) or inertia simulate",
    )
    rep.add_argument(
        "--out", type=Path, default=None, help="output folder (default: beside the CSV)"
    )
    return parser


def _report(args: argparse.Namespace) -> int:
    from .report import ledger_report

    if not args.ledger.is_file():
        raise UsageError(f"LEDGER: no file {str(args.ledger)!r}")
    out = _writable_folder(args.out or args.ledger.parent / "report")
    path = ledger_report(args.ledger, out)
    print(f"wrote {path} and its figures")
    return 0


def _writable_folder(path: Path) -> Path:
    """`path` if it is, or can be created as, a writable folder; checked without creating it."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing == path and not path.is_dir():
        raise UsageError(f"--out: {str(path)!r} exists and is not a folder")
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"--out: cannot create or write {str(path)!r} "
            f"({str(existing)!r} is not a writable folder)"
        )
    return path


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.seed < 0:
        raise UsageError(f"--seed must be an integer ≥ 0; got {args.seed}")
    out = _writable_folder(args.out)

    def progress(i: int, n: int, key: str) -> None:
        bar = "#" * (4 * i) + "." * (4 * (n - i))
        label = "done" if i == n else f"running {key}"
        sys.stderr.write(f"\r[{bar}] {i}/{n} {label:<12}")
        if i == n:
            sys.stderr.write("\n")
        sys.stderr.flush()

    outcomes = run_demo(out, quick=args.quick, seed=args.seed, progress=progress)
    rows = [("", "verdict", "check", "measured, and the bound it must meet")]
    for outcome in outcomes:
        for c in outcome.result.checks:
            rows.append(
                (outcome.experiment.key, "pass" if c.passed else "FAIL", c.name, c.requirement)
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    failed = sum(not c.passed for o in outcomes for c in o.result.checks)
    print(
        f"\n{f'{failed} check(s) FAILED' if failed else 'all checks pass'}; "
        f"figures, summary.json and report.html in {out}/"
    )
    return 1 if failed else 0


def _start_distributed(device: str | None) -> tuple[bool, str | None]:
    """Under torchrun (WORLD_SIZE > 1, no process group yet): initialise one from the
    environment, NCCL on CUDA (this rank's LOCAL_RANK device for a bare "cuda"), else gloo.
    Returns whether it started one, and the device to simulate on."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False, device
    cuda = device is not None and device.startswith("cuda")
    if cuda:
        import torch

        from .simulate import resolve_device

        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(resolve_device(device, None))  # a ValueError if it is not there
    dist.init_process_group("nccl" if cuda else "gloo")
    return True, device


def _simulate(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from . import systems
    from .dynamics import Dynamics
    from .figures import plot_ledger
    from .simulate import SimulationDiverged, resolve_device, simulate

    potential, q0 = systems.named(args.system, args.dim)
    dynamics = Dynamics(potential, gamma=args.gamma, sigma=args.sigma, mass=args.mass)
    out = _writable_folder(args.out)
    resolve_device(args.device, q0)  # a ValueError naming the device before any start
    started, device = _start_distributed(args.device)
    distributed = dist.is_initialized()
    lead = not distributed or dist.get_rank() == 0  # the rank that prints and writes
    try:
        try:  # simulate checks its arguments before any step
            trajectory = simulate(
                dynamics,
                q0,
                dt=args.dt,
                steps=args.steps,
                method=args.method,
                paths=args.paths,
                record_every=args.record_every,
                seed=args.seed,
                device=device,
                distributed=distributed,
                progress=lead and sys.stderr.isatty() and not args.json,
            )
            status = 0
        except SimulationDiverged as err:  # keep and write what was recorded before the blow-up
            # simulate attaches .step, .path and .trajectory to the error (on every rank)
            trajectory, status = err.trajectory, 1
            step, path = err.step, err.path
            if lead:
                print(
                    f"inertia: inertia became non-finite at step {step} on path {path}; "
                    f"writing the ledger recorded up to step {trajectory.steps}",
                    file=sys.stderr,
                )
        summary = trajectory.summary()  # pooled over the ranks
        everything = trajectory.gather()  # all paths, on the CPU (on rank 0 only)
    finally:
        if started:
            dist.destroy_process_group()
    if everything is None:
        return status
    out.mkdir(parents=True, exist_ok=True)
    everything.to_csv(out / "ledger.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_ledger(everything.ledger, out / "ledger.png", title=f"{args.system}, {trajectory.method}")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{args.system} ({trajectory.method}, {trajectory.steps} steps): "
            f"I {summary['inertia_initial']:.6g} → {summary['inertia_final']:.6g}, "
            f"dissipated {summary['dissipated_final']:.4g}, "
            f"injected {summary['injected_final']:.4g}, "
            f"residual {summary['residual_final']:.3g}; "
            f"ledger closes to {summary['ledger_closure_error']:.1e}. Wrote {out}/"
        )
    return status


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"demo": _demo, "simulate": _simulate, "report": _report}[args.command](args)
    except (UsageError, ValueError) as err:
        print(f"inertia: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
