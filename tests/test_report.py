"""`inertia report LEDGER.csv`: figures and a self-contained HTML page from any ledger CSV:
loss and learning rate, log scales, diverging runs drawn up to the blow-up, the regime shaded,
per-layer panels, no noise floor where its law does not apply, long ledgers down-sampled."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from inertia import COLUMNS, Dynamics, InertiaMonitor, Ledger, simulate, systems
from inertia.cli import main
from inertia.figures import BINS, ESCAPE, binned, plot_ledger, span_of
from inertia.report import ledger_report
from inertia.theory import heavy_ball_noise_floor


def monitored_csv(folder) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=gen, dtype=torch.float64)
    y = x.sum(1) + 0.3 * torch.randn(256, generator=gen, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9)
    monitor = InertiaMonitor(opt, log_dir=folder, noise="per_sample", alarm=True)
    for _ in range(200):
        idx = torch.randint(0, 256, (16,), generator=gen)
        opt.zero_grad()
        per_sample = 0.5 * (x[idx] @ theta - y[idx]) ** 2
        monitor.observe(per_sample.mean(), per_sample=per_sample)
        per_sample.mean().backward()
        opt.step()
    monitor.detach()


def test_report_of_a_monitored_run_has_every_figure(tmp_path, capsys):
    monitored_csv(tmp_path)
    assert main(["report", str(tmp_path / "ledger.csv"), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    names = ["training", "ledger_stack", "phase", "noise_floor", "margin"]
    for name in names:
        with Image.open(tmp_path / "rep" / f"{name}.png") as image:
            image.verify()
    assert html.count('src="data:image/png;base64,') == len(names)
    closure = re.search(r"closure[^<]*</td><td>([^<]+)<", html)
    assert closure and float(closure.group(1)) < 1e-12
    assert "wrote" in capsys.readouterr().out
    ledger = Ledger.read_csv(tmp_path / "ledger.csv")
    kinetic, _ = heavy_ball_noise_floor(
        ledger["h"], ledger["noise_trace"], 1.0 - ledger["gamma"] * ledger["h"]
    )
    predicted = re.search(r"kinetic, later half \(predicted\)</td><td>([^<]+)<", html)
    assert predicted and float(predicted.group(1)) == pytest.approx(
        float(kinetic[len(kinetic) // 2 :].nanmean()), rel=1e-3
    )


def test_report_of_a_simulation_averages_its_paths(tmp_path):
    tr = simulate(
        Dynamics(systems.DoubleWell(2), gamma=0.3, sigma=0.2),
        torch.ones(2),
        dt=0.01,
        steps=300,
        paths=4,
        seed=0,
        record_every=10,
    )
    tr.to_csv(tmp_path / "ledger.csv")
    assert main(["report", str(tmp_path / "ledger.csv")]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2  # no noise estimate, no margin
    rows = re.search(r"<td>rows</td><td>([^<]+)<", html)
    assert rows and float(rows.group(1)) == 31


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "no file"), ("a,b\n1,2\n", "not an inertia ledger"), ("", "no rows")],
)
def test_bad_ledger_exits_2_with_one_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "ledger.csv"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err


def assert_png(path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100


def test_plot_ledger_draws_a_training_run_ledger(tmp_path):
    """A monitor's ledger: 1-D columns against `step`, with NaN rows where a loss was not
    finite and inf where it blew up."""
    steps = torch.arange(50, dtype=torch.float64)
    columns = {
        name: torch.linspace(0.0, 1.0 + i, 50, dtype=torch.float64)
        for i, name in enumerate(COLUMNS)
    }
    columns["kinetic"][10] = float("nan")
    columns["potential"][45:] = float("inf")
    ledger = Ledger(steps, columns, time_name="step")
    assert_png(plot_ledger(ledger, tmp_path / "training.png", title="training"))


@pytest.mark.parametrize("paths", [1, 3, 25])
def test_plot_ledger_draws_a_simulation_with_its_band(tmp_path, paths):
    tr = simulate(
        Dynamics(systems.DoubleWell(2), gamma=0.3, sigma=0.2),
        torch.ones(2),
        dt=0.01,
        steps=50,
        paths=paths,
        seed=0,
    )
    assert_png(plot_ledger(tr.ledger, tmp_path / "simulation.png"))


@pytest.fixture
def drawn(monkeypatch):
    """The axes (colour bars left out) of every figure saved, by file name."""
    saved = {}
    savefig = Figure.savefig

    def keep(fig, path, *args, **kwargs):
        saved[Path(path).name] = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def by_title(axes, fragment):
    (ax,) = [ax for ax in axes if fragment in ax.get_title()]
    return ax


def with_columns(ledger: Ledger, **columns) -> Ledger:
    return Ledger(ledger.t, {**ledger, **columns}, time_name=ledger.time_name)


def quadratic_run(folder, steps, *, lr=lambda k: 1.0, opt=None, noise=None, dtype=torch.float32):
    """Heavy ball (or `opt`) on ½Σλᵢθᵢ², λ = (1, 0.5, 0.1), minibatch-like noise on the
    gradient, learning rate lr(k) through a LambdaLR, rows to `folder`/ledger.csv."""
    gen = torch.Generator().manual_seed(0)
    lam = torch.tensor([1.0, 0.5, 0.1], dtype=dtype)
    theta = torch.nn.Parameter(torch.ones(3, dtype=dtype))
    opt = opt([theta]) if opt else torch.optim.SGD([theta], lr=1.0, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr)
    monitor = InertiaMonitor(opt, log_dir=folder, noise=noise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the non-finite loss of a blow-up
        for _ in range(steps):
            opt.zero_grad()
            shift = 0.01 * torch.randn(2, 3, generator=gen, dtype=dtype)  # two micro-batches
            for i in range(2):
                loss = 0.5 * (lam * (theta - shift[i]) ** 2).sum()
                (loss / 2).backward()
                monitor.observe(loss, accumulate=True)
            opt.step()
            schedule.step()
    monitor.detach()
    return Path(folder) / "ledger.csv"


def test_a_run_that_diverged_is_drawn_up_to_its_blow_up_on_finite_axes(tmp_path, drawn):
    """Stable for 60 steps, then 5× the heavy ball's threshold 2(1 + μ)/λ_max: the loss grows
    to inf in float32. The figures end at the blow-up, on the scales of the rows before it."""
    path = quadratic_run(tmp_path, 120, lr=lambda k: 1.0 if k < 60 else 5 * 3.8)
    ledger = Ledger.read_csv(path)
    loss, flag = ledger["potential"].numpy(), ledger["flag"].numpy()
    diverged = int(np.flatnonzero(flag == 1)[0])
    assert np.isinf(loss).any() and np.nanmax(loss[np.isfinite(loss)]) > 1e30
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    span = span_of(ledger.t.numpy(), loss, flag)
    assert span.diverged == diverged and 60 <= span.blowup < diverged
    calm = np.nanmax(loss[: span.calm])
    for name, axes in drawn.items():
        for ax in axes:
            limits = [*ax.get_xlim(), *ax.get_ylim()]
            assert all(math.isfinite(x) for x in limits), (name, ax.get_title())
            if name != "phase.png":
                assert ax.get_xlim()[1] <= diverged
    assert by_title(drawn["training.png"], "learning rate").get_yscale() == "linear"  # 19×
    top = by_title(drawn["training.png"], "loss").get_ylim()[1]
    assert calm < top <= ESCAPE * 1.3 * calm < 1e-3 * np.nanmax(loss[np.isfinite(loss)])
    html = (tmp_path / "rep" / "report.html").read_text()
    assert f"diverged at step {diverged}" in html and "blew up from step" in html


@pytest.mark.filterwarnings("ignore:inertia. no energy map:UserWarning")  # the generic map
def test_no_noise_floor_for_a_map_without_friction(tmp_path, drawn):
    """Adagrad is read with μ = 1 and γ = 0: the heavy ball's floor does not apply."""
    path = quadratic_run(
        tmp_path, 60, opt=lambda p: torch.optim.Adagrad(p, lr=0.1), noise="microbatch"
    )
    ledger = Ledger.read_csv(path)
    assert (ledger["gamma"] == 0).all() and ledger["noise_trace"][1:].isfinite().all()
    html = ledger_report(path, tmp_path / "rep").read_text()
    assert not (tmp_path / "rep" / "noise_floor.png").exists()
    assert set(drawn) == {"training.png", "ledger_stack.png", "phase.png", "kinetic.png"}
    assert [ax.get_title() for ax in drawn["kinetic.png"]] == [
        "kinetic energy",
        "gradient noise tr(C)/B",
    ]
    assert "No noise floor" in html and "predicted" not in html


def test_the_floor_in_a_diagonal_metric_is_named_by_the_metric_column(tmp_path, drawn):
    """Adam's and RMSprop's K, heat and noise are in their diagonal metric M, where the floor
    is h²tr(M⁻¹C)/(2B(1 − μ²)) (docs/theory.md §4): a `metric` column (0: identity) says so,
    and the same numbers are drawn under that name."""
    ledger = Ledger.read_csv(quadratic_run(tmp_path, 40, noise="microbatch"))
    assert (ledger["gamma"] > 0).all()
    metric = torch.zeros(40, dtype=torch.float64)
    titles = {}
    for name, value in (("identity", 0), ("diagonal", 1)):
        ledger_report(with_columns(ledger, metric=metric + value), tmp_path / name)
        titles[name] = [ax.get_title() for ax in drawn["noise_floor.png"]]
        predicted = drawn["noise_floor.png"][0].get_lines()[1].get_ydata()
        assert np.isfinite(predicted).all()
    assert titles["identity"][1] == "gradient noise tr(C)/B"
    assert titles["diagonal"][1] == "gradient noise tr(M⁻¹C)/B"


def test_per_layer_panels_the_regime_and_a_learning_rate_spanning_decades(tmp_path, drawn):
    """A learning rate decaying 0.95× a step (2.6 decades: a log scale), 12 per-layer kinetic
    columns (the 8 largest drawn) and a noise column, a `regime` column shaded."""
    path = quadratic_run(tmp_path, 120, lr=lambda k: 0.95**k, noise="microbatch")
    ledger = Ledger.read_csv(path)
    share = torch.linspace(1.0, 12.0, 12, dtype=torch.float64)  # segment i: i/78 of the total
    layers = {f"kinetic/encoder.{i}.attn": ledger["kinetic"] * share[i] / 78 for i in range(12)}
    regime = torch.zeros(120, dtype=torch.float64)
    regime[40:60], regime[60:70] = 1.0, 2.0
    ledger = with_columns(ledger, **layers, regime=regime)
    ledger = with_columns(ledger, **{"noise_trace/encoder.0.attn": ledger["noise_trace"]})
    path = ledger.to_csv(tmp_path / "layers.csv")
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    assert by_title(drawn["training.png"], "learning rate").get_yscale() == "log"
    assert by_title(drawn["noise_floor.png"], "kinetic").get_yscale() == "log"
    kinetic, noise = drawn["layers.png"]
    assert kinetic.get_title() == "kinetic per segment, the 8 of 12 largest"
    legend = [text.get_text() for text in kinetic.get_legend().get_texts()]
    assert legend == [f"encoder.{i}.attn" for i in range(11, 3, -1)]
    assert noise.get_title() == "noise_trace per segment" and kinetic.get_yscale() == "log"
    loss = by_title(drawn["training.png"], "loss")
    shaded = [(p.get_x(), p.get_x() + p.get_width(), p.get_label()) for p in loss.patches]
    assert shaded == [(40, 60, "edge of stability"), (60, 70, "diverging")]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert re.search(r"rows at the edge of stability</td><td>20<", html)


def test_the_report_of_a_character_transformer(tmp_path, drawn):
    """The benchmarks' GPT-style model on the standard library's text, AdamW with warmup and
    cosine decay (two parameter groups), tiny here."""
    from workloads import char_transformer_run

    monitor, _, losses = char_transformer_run(
        12,
        log_dir=tmp_path,
        batch=4,
        context=16,
        warmup=4,
        chars=20_000,
        model_kwargs={"d_model": 32, "n_layers": 1, "n_heads": 2},
        monitor_kwargs={"noise": "fluctuation"},
    )
    monitor.detach()
    assert losses[-1] < losses[0]
    assert main(["report", str(tmp_path / "ledger.csv"), "--out", str(tmp_path / "rep")]) == 0
    # AdamW's kinetic energy, heat and noise are in its metric (the `metric` column is 1)
    assert set(drawn) == {"training.png", "ledger_stack.png", "phase.png", "noise_floor.png"}
    kinetic, noise = drawn["noise_floor.png"]
    assert noise.get_title() == "gradient noise tr(M⁻¹C)/B"
    assert "tr(M⁻¹C)" in kinetic.get_legend().get_texts()[1].get_text()
    lr = by_title(drawn["training.png"], "learning rate").get_lines()[0].get_ydata()
    assert lr[0] < lr[4] and lr[-1] < lr[4]  # warmup, then the cosine


def test_binned_gives_the_mean_and_envelope_of_each_group():
    t = np.arange(3000.0)
    y = np.sin(t)
    y[7] = np.nan
    tb, mean, low, high = binned(t, y, bins=100)
    assert len(tb) == len(mean) == 100 and tb[0] == 14.5
    assert mean[0] == pytest.approx(np.nanmean(y[:30])) and low[0] == np.nanmin(y[:30])
    assert high[-1] == y[-30:].max()
    assert all(x is y for x in binned(t, y, bins=1500)[1:])  # short: as it is


MILLION_ROWS = """
import sys, time, tracemalloc
from pathlib import Path
import torch
from inertia import Ledger
from inertia.report import ledger_report

n = 10**6
t = torch.arange(n, dtype=torch.float64)
noise = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
kinetic = 1.0 / (1.0 + t) + 1e-3 * noise
columns = {
    "lr": 0.1 * torch.cos(t / n) ** 2 + 1e-4, "h": 0.1 + 0 * t, "gamma": 1.0 + 0 * t,
    "kinetic": kinetic, "potential": 2.0 / (1.0 + t / 1000) + noise,
    "dissipated": kinetic.cumsum(0), "injected": 0.01 * t, "residual": 1e-3 * noise,
    "noise_trace": 0.1 * noise, "margin": 0.5 + 0.1 * noise, "alarm": 0 * t,
    "regime": (t > 0.9 * n).double(), "flag": (t % 100_000 == 7).double() * 2,
    **{f"kinetic/block.{i}": kinetic / (i + 1) for i in range(4)},
}
columns["inertia"] = columns["kinetic"] + columns["potential"]
ledger = Ledger(t, columns, time_name="step")
del columns, noise, kinetic
tracemalloc.start()  # Python's and numpy's allocations from here: building the ledger is not
start, cpu = time.perf_counter(), time.process_time()
ledger_report(ledger, Path(sys.argv[1]))
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(seconds, cpu, tracemalloc.get_traced_memory()[1] / 2**20)
"""


@pytest.mark.slow
def test_a_million_row_report_stays_light(tmp_path):
    """A 10⁶-row ledger (19 columns, 152 MB in memory) in a fresh process: at most 100 MB
    allocated at the report's peak and 20 s of CPU, and PNGs of at most 300 kB: every curve is
    drawn as BINS groups. The peak is traced (tracemalloc sees Python's and numpy's
    allocations): resident memory would also count the ledger's pages the kernel reclaimed
    before the report touched them again, which varied between 57 and 113 MB run to run."""
    out = subprocess.run(
        [sys.executable, "-c", MILLION_ROWS, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    seconds, cpu, extra_mb = (float(x) for x in out)
    assert extra_mb < 100 and cpu < 20, (extra_mb, cpu, seconds)
    for png in tmp_path.glob("*.png"):
        assert png.stat().st_size < 300_000, png
    html = (tmp_path / "report.html").read_text()
    assert f"1000000 rows: each curve is the mean of {BINS} groups" in html
    assert html.count('src="data:image/png;base64,') == 6  # the layers too


def million_like(rows: int) -> Ledger:
    """The 19-column training ledger of MILLION_ROWS, with `rows` rows."""
    t = torch.arange(rows, dtype=torch.float64)
    noise = torch.rand(rows, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kinetic = 1.0 / (1.0 + t) + 1e-3 * noise
    columns = {
        "lr": 0.1 * torch.cos(t / rows) ** 2 + 1e-4,
        "h": 0.1 + 0 * t,
        "gamma": 1.0 + 0 * t,
        "kinetic": kinetic,
        "potential": 2.0 / (1.0 + t / 1000) + noise,
        "dissipated": kinetic.cumsum(0),
        "injected": 0.01 * t,
        "residual": 1e-3 * noise,
        "noise_trace": 0.1 * noise,
        "margin": 0.5 + 0.1 * noise,
        "alarm": 0 * t,
        "regime": (t > 0.9 * rows).double(),
        "flag": (t % 10_000 == 7).double() * 2,
        **{f"kinetic/block.{i}": kinetic / (i + 1) for i in range(4)},
    }
    columns["inertia"] = columns["kinetic"] + columns["potential"]
    return Ledger(t, columns, time_name="step")


@pytest.mark.slow
def test_the_report_of_a_large_csv_streams_it(tmp_path):
    """`inertia report` of a 2·10⁵-row CSV (19 columns: 58 MB on disk, 30 MB as float64) in a
    fresh process (tests/peak_memory.py): its peak resident memory above the imported modules is
    at most twice the float64 table + 60 MB (reading the CSV as Python floats took 5 times the
    table more), and the summary is exact. By hand, 10⁶ rows (289 MB): 506 MB peak, 251 MB of
    it the modules, 10-13 s (it was 1.26-1.7 GB and 24-34 s)."""
    rows = 200_000
    ledger = million_like(rows)
    ledger.to_csv(tmp_path / "ledger.csv")
    script = Path(__file__).with_name("peak_memory.py")
    out = subprocess.run(
        [sys.executable, str(script), "report", str(tmp_path / "ledger.csv"), str(tmp_path / "r")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.splitlines()[-1]
    measured = json.loads(out)
    table_mb = rows * 19 * 8 / 2**20
    assert measured["status"] == 0
    assert measured["peak_mb"] - measured["base_mb"] < 2 * table_mb + 60, measured
    html = (tmp_path / "r" / "report.html").read_text()
    found = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td></tr>", html))
    assert float(found["rows"]) == rows
    assert float(found["inertia last"]) == pytest.approx(float(ledger["inertia"][-1]), rel=1e-4)
    assert float(found["skipped steps"]) == rows // 10_000


def test_reading_a_csv_ledger_gives_back_the_same_floats_and_contiguous_columns(tmp_path):
    ledger = million_like(70_000)  # more than one chunk of lines
    ledger["kinetic"][5] = float("nan")
    ledger["potential"][6] = float("inf")
    ledger.to_csv(tmp_path / "ledger.csv")
    back = Ledger.read_csv(tmp_path / "ledger.csv")
    assert list(back) == list(ledger) and torch.equal(back.t, ledger.t)
    for name in ledger:
        assert torch.equal(back[name], ledger[name]) or name == "kinetic", name
        assert back[name].is_contiguous()
    assert torch.equal(back["kinetic"].nan_to_num(), ledger["kinetic"].nan_to_num())


@pytest.mark.parametrize(
    ("cell", "status", "fragment"),
    [
        ("x" * 200_000, 2, "line 3"),  # the csv module's field limit, or a value not a number
        ("1" * 100_000, 0, ""),  # a number too large for float64: inf, drawn as a blow-up
        ("nan", 0, ""),
    ],
)
def test_a_huge_cell_gives_one_short_line(tmp_path, capsys, cell, status, fragment):
    monitored_csv(tmp_path)
    lines = (tmp_path / "ledger.csv").read_text().splitlines()
    first, _, rest = lines[2].partition(",")
    lines[2] = f"{first},{cell},{rest.partition(',')[2]}"
    (tmp_path / "ledger.csv").write_text("\n".join(lines) + "\n")
    assert main(["report", str(tmp_path / "ledger.csv")]) == status
    err = capsys.readouterr().err
    assert fragment in err and len(err) < 400 and err.count("\n") == (status != 0)


def test_a_ledger_without_gamma_and_h_has_no_floor(tmp_path, capsys):
    monitored_csv(tmp_path)
    ledger = Ledger.read_csv(tmp_path / "ledger.csv")
    kept = {n: ledger[n] for n in ledger if n not in ("gamma", "h")}
    Ledger(ledger.t, kept, time_name="step").to_csv(tmp_path / "bare.csv")
    assert main(["report", str(tmp_path / "bare.csv")]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "predicted" not in html and html.count('src="data:image/png;base64,') == 5
