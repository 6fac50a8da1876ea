"""`inertia demo --quick` end to end: exit status, figures, report, summary, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile

import pytest
from PIL import Image

from inertia.cli import main
from inertia.experiments import EXPERIMENTS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "inertia-demo"
    code = main(["demo", "--quick", "--out", str(out), "--seed", "0"])
    return code, out


def test_demo_exits_0_and_every_check_passes(demo):
    code, out = demo
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and set(summary["experiments"]) == set(EXPERIMENTS)
    for key, exp in summary["experiments"].items():
        assert exp["passed"] is True, key
        assert exp["checks"], key
        for check in exp["checks"]:
            assert isinstance(check["measured"], float) and isinstance(check["predicted"], float)
            assert check["passed"] is True, (key, check)


def test_every_figure_is_a_png_image(demo):
    _, out = demo
    summary = json.loads((out / "summary.json").read_text())
    names = [name for exp in summary["experiments"].values() for name in exp["figures"]]
    assert len(names) >= len(EXPERIMENTS)
    for name in names:
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 200


def test_report_has_every_section_with_embedded_images(demo):
    _, out = demo
    html = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for key, exp in summary["experiments"].items():
        section = re.search(rf"<section id='{key}'>(.*?)</section>", html, re.S)
        assert section, key
        body = section.group(1)
        assert body.count('src="data:image/png;base64,') == len(exp["figures"]), key
        assert "Claim." in body and "Law." in body and "PASS" in body
    assert 'src="http' not in html and 'src="file' not in html  # self-contained


def test_report_renders_every_figure_in_headless_chromium(demo):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    _, out = demo
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
                (out / "report.html").resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    assert 'data-loaded="true"' in dom
    rendered = re.findall(r'data-rendered="(\w+)"', dom)
    html = (out / "report.html").read_text()
    assert len(rendered) == html.count("<img ") > 0
    assert set(rendered) == {"true"}
