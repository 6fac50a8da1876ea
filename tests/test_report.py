"""`inertia report LEDGER.csv`: figures and a self-contained HTML page from any ledger CSV."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from inertia import Dynamics, InertiaMonitor, simulate, systems
from inertia.cli import main


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
