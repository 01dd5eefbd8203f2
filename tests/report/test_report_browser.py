"""The HTML report in a real headless Chromium (Debian's `chromium` package): no script errors,
the leaderboard sorts, every plot is there, and a screenshot is saved for a human to look at.

Skipped when no Chromium is installed, except under EVALKIT_REQUIRE_BROWSER=1 (CI), where a
missing browser fails the test. EVALKIT_SCREENSHOT_DIR=DIR also copies the screenshot there.
"""

from __future__ import annotations

import html as _html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_store

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("EVALKIT_REQUIRE_BROWSER") == "1":
        pytest.fail("EVALKIT_REQUIRE_BROWSER=1 but no Chromium found (apt-get install -y chromium)")
    pytest.skip("no Chromium installed (apt-get install -y chromium); set EVALKIT_REQUIRE_BROWSER=1 to require it")


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_report_in_headless_chromium(cli, tmp_path):
    browser = _browser()
    store = make_store(tmp_path / "runs" / "evalkit.sqlite")
    page = tmp_path / "leaderboard.html"
    code, _, err = cli("report", "--store", str(store), "-o", str(page))
    assert code == 0, err
    expected_svgs = page.read_text().count("<svg")

    # the page checks itself when opened with #selftest; read its verdict from the dumped DOM
    done = _chromium(browser, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                     "--dump-dom", page.as_uri() + "#selftest")
    assert done.returncode == 0, done.stderr[-2000:]
    m = re.search(r'<pre id="selftest" data-done="1">(.*?)</pre>', done.stdout, re.DOTALL)
    assert m, "the self-test did not run:\n" + done.stdout[-2000:]
    result = json.loads(_html.unescape(m.group(1)))
    assert result["errors"] == []
    assert not re.search(r"Uncaught|CONSOLE\(\d+\).*(Error|error)", done.stderr), done.stderr[-2000:]
    assert result["sorted"], result
    assert result["sorted_values"] == sorted(result["sorted_values"]) and len(result["sorted_values"]) == 4
    assert result["missing"] == [] and result["plots"] == expected_svgs == 8
    assert result["kinds"] == sorted(["recall-vs-length", "needle-heatmap", "recall-vs-cost", "recall-vs-attention",
                                      "cost-vs-length"])

    shot = tmp_path / "leaderboard.png"
    done = _chromium(browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a blank page is a few KiB
    if os.environ.get("EVALKIT_SCREENSHOT_DIR"):
        dest = Path(os.environ["EVALKIT_SCREENSHOT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "leaderboard.png")
        shutil.copy(page, dest / "leaderboard.html")
