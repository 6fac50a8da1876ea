"""`inertia demo --quick` end to end (exit status, table, figures, report, summary, a real
browser), and how a check reads: the measured value against the bound it must meet."""

from __future__ import annotations

import contextlib
import html
import io
import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from inertia.cli import main
from inertia.demo import EXPERIMENTS, AtLeast, AtMost, Check, Experiment, Result, Within


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "inertia-demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--quick", "--out", str(out), "--seed", "0"])
    return code, out, printed.getvalue()


def test_demo_exits_0_and_every_check_passes(demo):
    code, out, _ = demo
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and list(summary["experiments"]) == list(EXPERIMENTS)
    for key, exp in summary["experiments"].items():
        assert exp["passed"] is True, key
        assert exp["checks"], key
        for check in exp["checks"]:
            assert set(check) == {"name", "quantity", "measured", "bound", "requirement", "passed"}
            assert isinstance(check["measured"], float), (key, check)
            assert check["bound"]["kind"] in {"at_most", "at_least", "within"}, (key, check)
            assert check["requirement"].startswith(f"{check['quantity']} = "), (key, check)
            assert check["passed"] is True, (key, check)


def test_the_printed_table_states_each_measured_value_and_its_bound(demo):
    _, out, printed = demo
    summary = json.loads((out / "summary.json").read_text())
    lines = printed.splitlines()
    for key, exp in summary["experiments"].items():
        for check in exp["checks"]:
            row = [line for line in lines if line.endswith(check["requirement"])]
            assert len(row) >= 1, (key, check["requirement"])
            assert re.match(rf"{key}\s+pass\s+", row[0]), row[0]
    assert "all checks pass" in lines[-1]


def test_every_figure_is_a_png_image(demo):
    _, out, _ = demo
    summary = json.loads((out / "summary.json").read_text())
    names = [name for exp in summary["experiments"].values() for name in exp["figures"]]
    assert len(names) >= len(EXPERIMENTS)
    for name in names:
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 200


def test_report_has_every_section_with_its_checks_and_embedded_images(demo):
    _, out, _ = demo
    page = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for key, exp in summary["experiments"].items():
        section = re.search(rf"<section id='{key}'>(.*?)</section>", page, re.S)
        assert section, key
        body = section.group(1)
        assert body.count('src="data:image/png;base64,') == len(exp["figures"]), key
        assert "Claim." in body and "Law." in body and "PASS" in body
        for check in exp["checks"]:
            assert html.escape(check["requirement"]) in body, (key, check["requirement"])
    assert 'src="http' not in page and 'src="file' not in page  # self-contained


@pytest.mark.parametrize(
    ("check", "requirement"),
    [
        (
            Check("heating", "max |MC − law| / SE", 1.6153781, AtMost(4.0)),
            "max |MC − law| / SE = 1.615, must be ≤ 4",
        ),
        (
            Check("quadratic", "max |I − I₀|/I₀", 0.00192627, AtMost(0.00250626, "proven bound")),
            "max |I − I₀|/I₀ = 0.001926, must be ≤ 0.002506 (proven bound)",
        ),
        (Check("RK45", "drift ratio", 3.74617, AtLeast(3.0)), "drift ratio = 3.746, must be ≥ 3"),
        (
            Check("verlet", "fitted order", 2.000711, Within(2.0, 0.2)),
            "fitted order = 2.001, must be within 0.2 of 2",
        ),
        (
            Check("sweep", "γ of the fastest decay", 1.5, Within(1.5, 0.0)),
            "γ of the fastest decay = 1.5, must equal 1.5",
        ),
    ],
)
def test_a_check_of_each_kind_reads_as_measured_value_and_bound(check, requirement):
    assert check.requirement == requirement and check.passed


@pytest.mark.parametrize(
    ("bound", "met", "missed"),
    [
        (AtMost(4.0), 4.0, math.nextafter(4.0, math.inf)),
        (AtLeast(3.0), 3.0, math.nextafter(3.0, -math.inf)),
        (Within(2.0, 0.25), 2.25, math.nextafter(2.25, math.inf)),
        (Within(2.0, 0.25), 1.75, math.nextafter(1.75, -math.inf)),
        (Within(1.5, 0.0), 1.5, math.nextafter(1.5, math.inf)),
    ],
)
def test_the_verdict_is_decided_right_at_the_bound_and_shown_with_enough_digits(bound, met, missed):
    at, beyond = Check("c", "x", met, bound), Check("c", "x", missed, bound)
    assert at.passed and not beyond.passed
    shown = float(re.match(r"x = (\S+),", beyond.requirement).group(1))
    assert shown == missed  # the row shows the digits that put it beyond the bound
    assert at.requirement.startswith(f"x = {met:g}, ")


@pytest.mark.parametrize("bound", [AtMost(4.0), AtLeast(-math.inf), Within(0.0, math.inf)])
@pytest.mark.parametrize("measured", [math.nan, math.inf, -math.inf])
def test_a_non_finite_measurement_fails_every_bound(bound, measured):
    assert not Check("c", "x", measured, bound).passed


def test_a_failed_check_exits_1_and_is_marked_in_table_summary_and_report(
    monkeypatch, tmp_path, capsys
):
    def compute(cfg):
        return Result([Check("case", "ratio", 4.5, Within(4.0, 0.4, "order 2"))], {"n": 1.0})

    fake = Experiment("X1", "a failing experiment", "claim", "law", compute, lambda r, out: [])
    for key in list(EXPERIMENTS):
        monkeypatch.delitem(EXPERIMENTS, key)
    monkeypatch.setitem(EXPERIMENTS, "X1", fake)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert re.search(
        r"X1\s+FAIL\s+case\s+ratio = 4.5, must be within 0.4 of 4 \(order 2\)", printed
    )
    assert "1 check(s) FAILED" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is False
    assert summary["experiments"]["X1"]["checks"][0]["bound"] == {
        "kind": "within",
        "target": 4.0,
        "tol": 0.4,
        "note": "order 2",
    }
    assert "<td class='fail'>fail</td>" in (tmp_path / "report.html").read_text()


def test_report_renders_every_figure_in_headless_chromium(demo):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    _, out, _ = demo
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                Path(out / "report.html").resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    assert 'data-loaded="true"' in dom
    rendered = re.findall(r'data-rendered="(\w+)"', dom)
    page = (out / "report.html").read_text()
    assert len(rendered) == page.count("<img ") > 0
    assert set(rendered) == {"true"}
