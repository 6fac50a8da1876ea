"""Property tests: invalid input gives ValueError (CLI: exit 2 and one line), never another
exception, a hang or a silent NaN; valid input keeps shapes, dtypes and the ledger identity."""

from __future__ import annotations

import contextlib
import io
import math
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import inertia
from inertia import Dynamics, InertiaMonitor, simulate, systems, theory
from inertia.cli import main
from inertia.optim import InertiaSGD

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


# ---- Hostile input, argument by argument (issue 18, item 5) ----------------------------------
# Each public function gets its valid arguments with one or two replaced by something hostile:
# numbers of every kind (NaN, ±inf, 1e-320, 1e308, integers past 2**64), strings, None, bools,
# lists of the wrong length or depth, tensors of the wrong shape, odd objects. The only allowed
# outcomes: ValueError naming a replaced argument, FloatingPointError naming the law (valid
# input, result beyond float64), or a finite result.

EDGES = (0.0, -0.0, -1.0, 0.5, 2.0, 1e-320, 5e-324, 1e-300, 1e300, 1e308, -1e308, 1.79e308)
NASTY_FLOATS = st.one_of(st.sampled_from([*EDGES, math.nan, math.inf, -math.inf]), st.floats())
NASTY_INTS = st.sampled_from(
    [-1, 0, 1, 2, 3, 2**40, 2**62, 2**63, 2**64, 10**30, -(10**30), 10**400]
)
NASTY_TENSORS = st.builds(
    lambda shape, fill: torch.full(shape, fill, dtype=torch.float64),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.sampled_from([0.0, 1.0, -1.0, 1e308, math.nan, math.inf]),
)
HOSTILE = st.one_of(
    NASTY_FLOATS,
    NASTY_INTS,
    st.text(max_size=3),
    st.none(),
    st.booleans(),
    st.lists(NASTY_FLOATS, max_size=4),
    st.lists(st.lists(NASTY_FLOATS, max_size=3), max_size=3),
    NASTY_TENSORS,
    st.sampled_from([object(), {"a": 1}, 1 + 2j, torch.tensor([1 + 2j]), b"x", (1.0, "x")]),
)


def assert_finite(out) -> None:
    """Every number in a result (tensors, floats, tuples of them) is finite."""
    if isinstance(out, tuple | list):
        for x in out:
            assert_finite(x)
    elif isinstance(out, torch.Tensor):
        assert bool(torch.isfinite(out).all()), out
    elif isinstance(out, float):
        assert math.isfinite(out), out


def check_outcome(call, kwargs, replaced, law):
    """Call; the outcome must be a ValueError naming a replaced argument, a FloatingPointError
    naming `law`, or a finite result (checked by `assert_finite`, returned)."""
    try:
        out = call(**kwargs)
    except ValueError as err:
        assert any(name in str(err) for name in replaced), (replaced, str(err))
        return None
    except FloatingPointError as err:
        assert law in str(err), (law, str(err))
        return None
    assert_finite(out)
    return out


def hostile_call(data, call, valid, optional=()):
    """`valid` (and maybe some `optional` keywords) with one or two entries made hostile."""
    kwargs = dict(valid)
    for name, value in optional:
        if data.draw(st.booleans(), label=f"give {name}"):
            kwargs[name] = value
    names = sorted(kwargs)
    replaced = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
    for name in replaced:
        kwargs[name] = data.draw(HOSTILE, label=name)
    return kwargs, replaced


H2 = [[2.0, 0.5], [0.5, 1.0]]
LAWS = {
    "quadratic_inertia": (
        {"hessian": H2, "q0": [1.0, 0.0], "v0": [0.0, 0.5], "gamma": 0.3, "t": [0.0, 1.0]},
        [("mass", [1.0, 2.0]), ("center", [0.1, 0.2]), ("minimum", 0.5)],
    ),
    "expected_inertia": (
        {"hessian": H2, "q0": [1.0, 0.0], "v0": [0.0, 0.5], "gamma": 0.3, "sigma": 0.2, "t": [1.0]},
        [("mass", [1.0, 2.0]), ("center", [0.1, 0.2]), ("minimum", 0.5)],
    ),
    "heating": ({"inertia0": 1.0, "sigma": 0.2, "t": [0.0, 2.0], "dim": 2}, [("mass", 2.0)]),
    "temperature": ({"gamma": 0.5, "sigma": 0.3}, [("mass", 2.0)]),
    "stationary_inertia": (
        {"dim": 2, "gamma": 0.5, "sigma": 0.3},
        [("mass", 2.0), ("minimum", 1.0)],
    ),
    "envelope": ({"inertia0": 2.0, "gamma": 0.5, "t": [0.0, 1.0]}, [("minimum", 0.5)]),
    "relaxation": (
        {"inertia0": 2.0, "gamma": 0.5, "sigma": 0.3, "t": [0.0, 1.0], "dim": 2},
        [("minimum", 0.5)],
    ),
    "decay_rate": ({"eigenvalues": [1.0, 3.0], "gamma": 0.5}, [("mass", [1.0, 2.0])]),
    "critical_damping": ({"eigenvalues": [1.0, 3.0]}, [("mass", [1.0, 2.0])]),
    "heavy_ball_margin": ({"curvature": 1.0, "momentum": 0.9}, [("variance", 0.5)]),
    "heavy_ball_noise_floor": ({"h": 0.1, "noise_trace": [1.0, 2.0], "momentum": 0.9}, []),
}


@pytest.mark.parametrize("law", sorted(LAWS))
@settings(max_examples=40)
@given(data=st.data())
def test_every_law_rejects_hostile_input_or_gives_a_finite_result(law, data):
    valid, optional = LAWS[law]
    kwargs, replaced = hostile_call(data, getattr(theory, law), valid, optional)
    check_outcome(getattr(theory, law), kwargs, replaced, law)


@pytest.mark.parametrize("law", sorted(LAWS))
@settings(max_examples=30)
@given(data=st.data())
def test_every_law_at_extreme_finite_values_is_finite_or_raises_floating_point_error(law, data):
    """Valid magnitudes from 5e-324 to 1.8e308 for every number: a finite result or a
    FloatingPointError naming the law (a ValueError only for an out-of-domain value)."""
    valid, optional = LAWS[law]
    extreme = st.sampled_from([5e-324, 1e-320, 1e-300, 1e-8, 1.0, 1e8, 1e300, 1e308, 1.7e308])
    kwargs = dict(valid) | dict(optional)
    for name, value in list(kwargs.items()):
        if isinstance(value, float) and data.draw(st.booleans(), label=f"extreme {name}"):
            kwargs[name] = data.draw(extreme, label=name)
    check_outcome(getattr(theory, law), kwargs, list(kwargs), law)


SYSTEMS = {
    "Quadratic": ({"hessian": H2}, [("center", [0.1, 0.2]), ("minimum", 0.5)]),
    "Quadratic-eigenvalues": ({"eigenvalues": [1.0, 2.0]}, [("center", [0.1, 0.2])]),
    "Rosenbrock": ({"dim": 2, "b": 100.0}, []),
    "DoubleWell": ({"dim": 1, "barrier": 1.0, "width": 1.0}, []),
    "AnharmonicChain": ({"n": 3, "beta": 1.0}, []),
    "LogisticRegression": ({"samples": 20, "dim": 2, "l2": 0.01, "seed": 0}, []),
    "TeacherStudentMLP": ({"input_dim": 2, "hidden": 2, "samples": 8, "seed": 0}, []),
    "named": ({"name": "quadratic", "dim": 2}, []),
}


@pytest.mark.parametrize("system", sorted(SYSTEMS))
@settings(max_examples=40)
@given(data=st.data())
def test_every_system_constructor_rejects_hostile_input_with_value_error(system, data):
    valid, optional = SYSTEMS[system]
    make = getattr(systems, system.split("-")[0])
    kwargs, replaced = hostile_call(data, make, valid, optional)
    try:
        made = make(**kwargs)
    except ValueError as err:
        assert any(name in str(err) for name in replaced) or "system" in str(err), str(err)
        return
    loss = made[0] if isinstance(made, tuple) else made
    assert math.isfinite(loss.minimum) and bool(torch.isfinite(loss.argmin).all())


@settings(max_examples=60)
@given(data=st.data())
def test_dynamics_and_its_methods_reject_hostile_input_with_value_error(data):
    valid = {"loss": systems.DoubleWell(2), "gamma": 0.1, "sigma": 0.2, "mass": 1.0}
    kwargs, replaced = hostile_call(data, Dynamics, valid)
    dynamics = check_outcome(Dynamics, kwargs, replaced, "Dynamics")
    if dynamics is None:
        return
    for method, name in (("damping", "t"), ("noise_heat_rate", "dim"), ("check", "q")):
        check_outcome(getattr(dynamics, method), {name: data.draw(HOSTILE)}, [name], method)


SIM_VALID = {"dt": 0.1, "steps": 5, "q0": [1.0]}
SIM_OPTIONAL = [
    ("v0", [0.5]),
    ("paths", 2),
    ("record_every", 2),
    ("seed", 3),
    ("dtype", torch.float32),
    ("noise_dtype", torch.float64),
    ("method", "baoab"),
    ("device", "cpu"),
    ("t0", 1.0),
    ("distributed", False),
]


@settings(max_examples=60)
@given(data=st.data())
def test_simulate_rejects_hostile_input_with_value_error_only(data):
    kwargs, replaced = hostile_call(data, simulate, SIM_VALID, SIM_OPTIONAL)
    dynamics = Dynamics(systems.DoubleWell(1), gamma=0.5, sigma=0.1)
    try:
        tr = simulate(dynamics, **kwargs)
    except ValueError as err:
        assert any(name in str(err) for name in replaced), (replaced, str(err))
        return
    except inertia.SimulationDiverged:  # a valid but unstable run (dt = 1e308, say): reported
        return
    assert bool(torch.isfinite(tr.inertia).all()) and bool(torch.isfinite(tr.t).all())


OPTIM_VALID = {"lr": 0.1, "momentum": 0.9}
OPTIM_OPTIONAL = [
    ("restart", False),
    ("weight_decay", 0.01),
    ("tolerance", 0.5),
    ("decrease", 0.5),
    ("increase", 1.2),
    ("patience", 3),
    ("min_scale", 1e-3),
]


@settings(max_examples=60)
@given(data=st.data(), params=st.one_of(st.none(), HOSTILE))
def test_inertia_sgd_rejects_hostile_input_with_value_error(data, params):
    kwargs, replaced = hostile_call(data, InertiaSGD, OPTIM_VALID, OPTIM_OPTIONAL)
    if data.draw(st.booleans(), label="hostile params"):
        kwargs["params"], replaced = params, [*replaced, "params"]
    else:
        kwargs["params"] = [torch.nn.Parameter(torch.ones(2))]
    try:
        opt = InertiaSGD(**kwargs)
    except ValueError as err:
        assert any(name in str(err) for name in replaced), (replaced, str(err))
        return
    assert all(math.isfinite(g["lr"]) for g in opt.param_groups)


@settings(max_examples=60)
@given(data=st.data())
def test_energy_functions_reject_hostile_input_with_value_error(data):
    columns = {name: torch.zeros(3) for name in inertia.COLUMNS}
    for call, valid in (
        (inertia.Ledger, {"t": torch.arange(3.0), "columns": columns, "time_name": "t"}),
        (inertia.kinetic, {"v": torch.ones(2, 3), "mass": 2.0}),
        (inertia.CompensatedSum, {"shape": (2, 3), "dtype": torch.float64, "device": "cpu"}),
    ):
        kwargs, replaced = hostile_call(data, call, valid)
        check_outcome(call, kwargs, replaced, call.__name__)
    total = inertia.CompensatedSum((2,))
    check_outcome(total.add_, {"x": data.draw(HOSTILE)}, ["x"], "add_")


COLUMNS3 = {name: torch.zeros(3) for name in inertia.COLUMNS}
BAD_ENERGY_CALLS = [
    (lambda: inertia.Ledger([0.0, 1.0, 2.0], COLUMNS3), "t"),
    (lambda: inertia.Ledger(torch.arange(4.0), COLUMNS3), "columns['kinetic']"),
    (lambda: inertia.Ledger(torch.arange(3.0), [("kinetic", 1)]), "columns"),
    (lambda: inertia.Ledger(torch.arange(3.0), {**COLUMNS3, "x": "y"}), "columns['x']"),
    (lambda: inertia.Ledger(torch.arange(3.0), COLUMNS3, time_name=None), "time_name"),
    (lambda: inertia.kinetic([1.0, 2.0]), "v"),
    (lambda: inertia.kinetic(torch.ones(3), mass=[1.0, 2.0]), "mass"),
    (lambda: inertia.kinetic(torch.ones(3), mass="heavy"), "mass"),
    (lambda: inertia.CompensatedSum("3"), "shape"),
    (lambda: inertia.CompensatedSum((10**30,)), "shape"),
    (lambda: inertia.CompensatedSum((2**40, 2**20)), "shape"),  # beyond memory
    (lambda: inertia.CompensatedSum((3,), dtype=torch.int64), "dtype"),
    (lambda: inertia.CompensatedSum((3,), device="nowhere"), "device"),
    (lambda: inertia.CompensatedSum((3,)).add_(torch.ones(4)), "x"),
]


@pytest.mark.parametrize(("call", "name"), BAD_ENERGY_CALLS, ids=[n for _, n in BAD_ENERGY_CALLS])
def test_energy_functions_name_their_bad_arguments(call, name):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}"):
        call()


def test_kinetic_energy_beyond_the_dtype_raises_floating_point_error():
    with pytest.raises(FloatingPointError, match=r"^kinetic\("):
        inertia.kinetic(torch.ones(3), mass=1e300)  # float32 velocities
    assert float(inertia.kinetic(torch.ones(3, dtype=torch.float64), mass=1e300)) == 1.5e300
