"""`inertia report LEDGER.csv`: figures and a self-contained HTML page from any ledger CSV."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from inertia import COLUMNS, Dynamics, InertiaMonitor, Ledger, simulate, systems
from inertia.cli import main
from inertia.report import plot_ledger
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
    names = ["ledger_stack", "phase", "noise_floor", "margin"]
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
    """A monitor's ledger: 1-D columns against `step`, with NaN rows where a loss was not finite."""
    steps = torch.arange(50, dtype=torch.float64)
    columns = {
        name: torch.linspace(0.0, 1.0 + i, 50, dtype=torch.float64)
        for i, name in enumerate(COLUMNS)
    }
    columns["kinetic"][10] = float("nan")
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
