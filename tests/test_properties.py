"""Property tests: invalid input gives ValueError (CLI: exit 2 and one line), never another
exception, a hang or a silent NaN; valid input keeps shapes, dtypes and the ledger identity."""

from __future__ import annotations

import contextlib
import io
import math

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import inertia
from inertia import Dynamics, InertiaMonitor, simulate, systems, theory
from inertia.cli import main

ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10, 10),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)


def valid_number(x, *, low: float, strict: bool) -> bool:
    return (
        not isinstance(x, bool)
        and isinstance(x, int | float)
        and math.isfinite(x)
        and (x > low if strict else x >= low)
    )


@given(gamma=ANY_NUMBER, sigma=ANY_NUMBER, mass=ANY_NUMBER)
def test_dynamics_accepts_exactly_the_valid_parameters(gamma, sigma, mass):
    ok = (
        valid_number(gamma, low=0, strict=False)
        and valid_number(sigma, low=0, strict=False)
        and valid_number(mass, low=0, strict=True)
    )
    try:
        Dynamics(systems.DoubleWell(2), gamma=gamma, sigma=sigma, mass=mass)
    except ValueError:
        assert not ok
    else:
        assert ok


SMALL = dict(allow_nan=False, allow_infinity=False)


@given(
    dim=st.integers(1, 3),
    paths=st.integers(1, 3),
    steps=st.integers(1, 40),
    record_every=st.integers(1, 50),
    method=st.sampled_from(("auto", *inertia.METHODS)),
    dt=st.floats(1e-4, 0.2, **SMALL),
    gamma=st.floats(0, 5, **SMALL),
    sigma=st.floats(0, 2, **SMALL),
    mass=st.floats(0.1, 10, **SMALL),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from((torch.float32, torch.float64)),
)
def test_valid_simulations_keep_shapes_dtypes_and_the_ledger_identity(
    dim, paths, steps, record_every, method, dt, gamma, sigma, mass, seed, dtype
):
    dyn = Dynamics(systems.DoubleWell(dim), gamma=gamma, sigma=sigma, mass=mass)
    q0 = torch.linspace(-1.5, 1.5, dim)
    try:
        tr = simulate(
            dyn,
            q0,
            dt=dt,
            steps=steps,
            method=method,
            paths=paths,
            record_every=record_every,
            seed=seed,
            dtype=dtype,
        )
    except FloatingPointError:  # an explicit method blowing up is reported, never silent
        assume(False)
    records = len(range(0, steps + 1, record_every)) + (steps % record_every != 0)
    for name in inertia.COLUMNS:
        column = getattr(tr, name)
        assert column.shape == (records, paths) and column.dtype == torch.float64
        assert bool(torch.isfinite(column).all())
    assert tr.q.shape == (paths, dim) and tr.q.dtype == dtype
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    assert float(tr.ledger.closure_error().abs().max()) <= tolerance * max(
        1.0, float(tr.inertia.abs().max())
    )


@given(
    dt=ANY_NUMBER,
    steps=ANY_NUMBER,
    paths=ANY_NUMBER,
    record_every=ANY_NUMBER,
    method=st.one_of(st.sampled_from(inertia.METHODS), st.text(max_size=6)),
)
def test_simulate_rejects_bad_arguments_with_value_error_only(
    dt, steps, paths, record_every, method
):
    ok = (
        valid_number(dt, low=0, strict=True)
        and isinstance(steps, int)
        and not isinstance(steps, bool)
        and isinstance(paths, int)
        and not isinstance(paths, bool)
        and isinstance(record_every, int)
        and not isinstance(record_every, bool)
        and method in ("auto", *inertia.METHODS)
    )
    assume(not ok or (steps <= 20 and paths <= 3 and dt < 1))
    ok = ok and steps >= 1 and paths >= 1 and record_every >= 1
    try:
        simulate(
            Dynamics(systems.DoubleWell(1)),
            torch.ones(1),
            dt=dt,
            steps=steps,
            paths=paths,
            record_every=record_every,
            method=method,
        )
    except ValueError:
        assert not ok
    else:
        assert ok


@given(
    lam=st.lists(st.floats(0, 10, **SMALL), min_size=1, max_size=3),
    gamma=st.floats(0, 10, **SMALL),
    sigma=st.floats(0, 3, **SMALL),
    t=st.lists(st.floats(0, 50, **SMALL), min_size=1, max_size=5),
)
def test_theory_laws_are_finite_with_the_right_shape(lam, gamma, sigma, t):
    a = torch.diag(torch.tensor(lam, dtype=torch.float64))
    q0, v0 = torch.ones(len(lam)), torch.zeros(len(lam))
    exact = theory.quadratic_inertia(a, q0, v0, gamma, t)
    mean = theory.expected_inertia(a, q0, v0, gamma, sigma, t)
    for out in (
        exact,
        mean,
        theory.heating(1.0, sigma, t, dim=len(lam)),
        theory.envelope(1.0, gamma, t),
    ):
        assert (
            out.shape == (len(t),)
            and out.dtype == torch.float64
            and bool(torch.isfinite(out).all())
        )
    assert bool((exact >= 0).all()) and bool((mean >= exact - 1e-9 * (1 + exact)).all())
    rate = theory.decay_rate(lam, gamma)
    assert 0 <= rate <= gamma + 1e-12


@given(
    gamma=ANY_NUMBER, sigma=ANY_NUMBER, t=st.one_of(ANY_NUMBER, st.lists(ANY_NUMBER, max_size=3))
)
def test_theory_rejects_bad_arguments_with_value_error_only(gamma, sigma, t):
    try:
        out = theory.expected_inertia([[1.0]], [1.0], [0.0], gamma, sigma, t)
    except (ValueError, FloatingPointError):  # bad input, or a result beyond float64: reported
        return
    assert bool(torch.isfinite(out).all())


@given(
    every=ANY_NUMBER,
    on_nan=st.one_of(st.sampled_from(("flag", "raise")), st.text(max_size=4)),
    history=st.one_of(st.none(), ANY_NUMBER),
)
def test_monitor_rejects_bad_arguments_with_value_error_only(every, on_nan, history):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    ok = (
        isinstance(every, int)
        and not isinstance(every, bool)
        and every >= 1
        and on_nan in ("flag", "raise")
        and (
            history is None
            or (isinstance(history, int) and not isinstance(history, bool) and history >= 1)
        )
    )
    try:
        InertiaMonitor(opt, every=every, on_nan=on_nan, history=history).detach()
    except ValueError:
        assert not ok
    else:
        assert ok


OPTION_VALUES = st.one_of(
    st.integers(-3, 50).map(str),
    st.floats(-1, 2, **SMALL).map(repr),
    st.sampled_from(["nan", "inf", "x", "", "1e400"]),
)
OPTIONS = [
    "--system",
    "--dim",
    "--gamma",
    "--sigma",
    "--mass",
    "--dt",
    "--steps",
    "--method",
    "--paths",
    "--seed",
    "--record-every",
]


@given(
    options=st.lists(
        st.tuples(
            st.sampled_from(OPTIONS),
            st.one_of(
                OPTION_VALUES,
                st.sampled_from(["quadratic", "double-well", "verlet", "baoab", "rosenbrock"]),
            ),
        ),
        max_size=6,
    )
)
def test_cli_exits_0_1_or_2_with_one_line_on_bad_input(options, tmp_path_factory):
    argv = ["simulate", "--system", "quadratic", "--steps", "20"]
    for name, value in options:
        if name == "--steps" and value.lstrip("-").isdigit() and int(value) > 200:
            continue
        argv += [name, value]
    argv += ["--out", str(tmp_path_factory.mktemp("cli"))]
    with (
        contextlib.redirect_stderr(io.StringIO()) as stderr,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        code = main(argv)
    err = stderr.getvalue()
    assert code in (0, 1, 2)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("inertia: error:")
