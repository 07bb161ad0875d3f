"""compare --html: one self-contained page; rendered in a real headless Chromium when installed."""
import re
import shutil
import subprocess

import pytest

from conftest import SCENARIOS
from pyiommufd.explore import compare
from pyiommufd.report.html import compare_html
from pyiommufd.scenario import load


@pytest.fixture(scope="module")
def page():
    sc = load(SCENARIOS / "explore" / "hot-unplug.toml")
    res = compare(sc, ["linux-6.6", "linux-6.12"], ["kernel-auto", "cc-aware"], graph_limit=200)
    return compare_html(sc, res)


def test_page_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)="https?://', page), "must work offline"
    assert "<script" not in page


def test_page_has_chart_hazards_and_graph(page):
    assert page.count('aria-label="domain counts for') == 4
    assert "kvm-coherent-but-noncoherent-dma" in page and "hot_unplug device=gpu0" in page
    assert "State graphs" in page and ("<svg" in page.split("State graphs")[1] or "state 0" in page)


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed")
def test_page_renders_in_headless_chromium(page, tmp_path):
    html = tmp_path / "compare.html"
    html.write_text(page)
    png = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,1600",
                    html.as_uri()], capture_output=True, timeout=120)
    assert png.exists() and png.stat().st_size > 20000   # a blank page is a few KB
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Profiles side by side" in dom and "linux-6.12+cc-aware" in dom
