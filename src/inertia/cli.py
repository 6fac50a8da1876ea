"""The `inertia` command: parse, call the library, print.

    inertia demo [--out DIR] [--quick] [--seed N]
    inertia simulate --system NAME [--dim D] [--gamma G] [--sigma S] [--mass M] [--dt H]
                     [--steps N] [--method M] [--paths P] [--seed N] [--record-every K]
                     [--device DEV] [--out DIR] [--json]
    inertia report LEDGER.csv [--out DIR]

Every failure is one line on stderr, never a traceback: wrong input (arguments, an output
folder that cannot be created or written, a run too large for the memory available, a file that
is not a ledger) exits with status 2 before any work; a failed check (demo), a blow-up (simulate,
which writes the records kept up to it) or another failure of a run exits with status 1. Output
folders are created and probed for writing before the work starts. INERTIA_DEBUG=1 shows the
traceback of an unexpected failure. Under torchrun (WORLD_SIZE > 1), `simulate` shards its paths
over the ranks (gloo, or NCCL with --device cuda); rank 0 prints and writes the pooled results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
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


SEEDS = 2**64  # seeds are integers in [0, SEEDS)
NAME_MAX = 255  # bytes in one file name (Linux, macOS)
#: Bytes a simulation holds per record and path (its table, the gathered copy, the CSV rows
#: as Python floats, the figure's arrays), per coordinate and path (the state, the integrator's
#: work arrays, the checkpoint) and per record (its time, its step).
RECORD_BYTES, STATE_BYTES, MARK_BYTES = 400, 256, 64
#: The options named in the library's argument errors, by the library's name.
FLAGS = {n: "--" + n.replace("_", "-") for n in ("dt", "steps", "paths", "record_every", "seed")}
FLAGS |= {n: f"--{n}" for n in ("dim", "gamma", "sigma", "mass", "method", "device", "system")}


def _short(value: object, limit: int = 120) -> str:
    """repr(str(value)), shortened to `limit` characters for a one-line message."""
    text = repr(str(value))
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _number(n: int) -> str:
    text = str(n)
    return text if len(text) <= 40 else f"{text[:12]}… ({len(text)} digits)"


def _check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed < SEEDS:
        raise UsageError(f"--seed must be an integer in [0, 2**64); got {_number(seed)}")


def available_memory() -> int | None:
    """Bytes this process may still allocate (`inertia._checks.available_memory`: MemAvailable
    capped by a cgroup limit); None where unknown."""
    from ._checks import available_memory as free  # imports torch: not at the CLI's start

    return free()


def simulation_bytes(system: str, dim: int, steps: int, paths: int, record_every: int) -> int:
    """An upper estimate of the memory `inertia simulate` needs, from its sizes alone."""
    records = steps // record_every + 2
    size = records * (paths * RECORD_BYTES + MARK_BYTES) + paths * dim * STATE_BYTES
    if system in ("anharmonic-chain", "logistic"):  # a (d + 1) × d bond matrix, a d × d Hessian
        size += 4 * 8 * (dim + 1) * dim + 200 * 8 * dim
    return size


def _check_memory(args: argparse.Namespace) -> None:
    """UsageError before any work if the run cannot fit in the memory available."""
    sizes = (args.dim, args.steps, args.paths, args.record_every)
    if min(sizes) < 1:
        return  # the library names the bad one
    need, free = simulation_bytes(args.system, *sizes), available_memory()
    if free is not None and need > free:
        records = args.steps // args.record_every + 1
        raise UsageError(
            "--steps/--record-every/--paths/--dim: this run needs about "
            f"{need / 2**30:.3g} GiB of memory ({_number(records)} records × "
            f"{_number(args.paths)} paths, dimension {_number(args.dim)}), more than the "
            f"{free / 2**30:.3g} GiB available; lower "
            "--steps, --paths or --dim, or raise --record-every"
        )


@contextmanager
def output_folder(path: Path, files: Sequence[str] = (), flag: str = "--out") -> Iterator[Path]:
    """Create `path` (with its parents) and probe it by writing a file, before any work: a
    UsageError naming `flag` if it cannot be (or one of `files` in it is a folder). The folders
    it created are removed again (while empty) if the work fails with bad input."""
    if any(len(os.fsencode(part)) > NAME_MAX for part in path.parts):
        raise UsageError(f"{flag}: a name longer than {NAME_MAX} bytes in {_short(path)}")
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag}: {_short(path)} exists and is not a folder")
        for name in files:
            if (path / name).is_dir():
                raise UsageError(f"{flag}: {_short(path / name)} is a folder")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"inertia")
            probe.flush()
    except OSError as err:
        _remove_empty(created)
        reason = err.strerror or type(err).__name__
        raise UsageError(f"{flag}: cannot create or write {_short(path)} ({reason})") from None
    try:
        yield path
    except (UsageError, ValueError):
        _remove_empty(created)
        raise


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders, innermost first, while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _report(args: argparse.Namespace) -> int:
    from .report import ledger_report

    try:
        found = args.ledger.is_file()
    except OSError as err:  # a name too long, a loop of links
        raise UsageError(f"LEDGER: cannot read {_short(args.ledger)} ({err.strerror})") from None
    if not found:
        what = "a folder, not a ledger file" if args.ledger.is_dir() else "no file"
        raise UsageError(f"LEDGER: {what} {_short(args.ledger)}")
    out = args.out or args.ledger.parent / "report"
    with output_folder(out, ("report.html",)):
        path = ledger_report(args.ledger, out)
    print(f"wrote {path} and its figures")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _check_seed(args.seed)

    def progress(i: int, n: int, key: str) -> None:
        bar = "#" * (4 * i) + "." * (4 * (n - i))
        label = "done" if i == n else f"running {key}"
        sys.stderr.write(f"\r[{bar}] {i}/{n} {label:<12}")
        if i == n:
            sys.stderr.write("\n")
        sys.stderr.flush()

    with output_folder(args.out, ("summary.json", "report.html")) as out:
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

    _check_seed(args.seed)
    _check_memory(args)  # before the system is built: a huge --dim is refused here
    potential, q0 = systems.named(args.system, args.dim)
    dynamics = Dynamics(potential, gamma=args.gamma, sigma=args.sigma, mass=args.mass)
    resolve_device(args.device, q0)  # a ValueError naming the device before any start
    first = os.environ.get("RANK", "0") == "0"  # the rank that will write (rank 0)
    files = ("ledger.csv", "summary.json", "ledger.png")
    with output_folder(args.out, files) if first else nullcontext(args.out) as out:
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
            except SimulationDiverged as err:  # keep and write what was recorded before it
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
    try:
        everything.to_csv(out / "ledger.csv")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        title = f"{args.system}, {trajectory.method}"
        plot_ledger(everything.ledger, out / "ledger.png", title=title)
    except OSError as err:
        raise RunError(f"cannot write the results in {_short(out)} ({err.strerror})") from None
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


class RunError(Exception):
    """A run that failed after it started: reported in one line, exit status 1."""


def _one_line(text: str, limit: int = 2000) -> str:
    text = " ".join(text.split("\n"))
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _flagged(message: str) -> str:
    """A library error naming an argument, with the argument's option instead."""
    name, _, rest = message.partition(" ")
    return f"{FLAGS[name]} {rest}" if name in FLAGS and rest else message


def main(argv: list[str] | None = None) -> int:
    """Run the command; its exit status (0, 1 or 2), every failure one line on stderr."""
    try:
        args = build_parser().parse_args(argv)
        return {"demo": _demo, "simulate": _simulate, "report": _report}[args.command](args)
    except (UsageError, ValueError) as err:
        print(f"inertia: error: {_one_line(_flagged(str(err)))}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"inertia: error: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except MemoryError as err:
        print(f"inertia: error: out of memory {_one_line(str(err))}".rstrip(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("inertia: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a failure the checks above did not foresee: still one line
        if os.environ.get("INERTIA_DEBUG"):
            raise
        what = _one_line(f"{type(err).__name__}: {err}")
        print(f"inertia: error: the run failed ({what})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
