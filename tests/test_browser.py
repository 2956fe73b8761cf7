"""The dashboard in a real browser: headless Debian Chromium driven by Playwright.

Opens the dashboard of a running ``shoal demo`` (3 nodes), sees the 3 nodes,
kills a node through the demo's stdin and sees — within the failover bound —
its duties owned by the others (the page's ``data-owner`` attributes), the
node marked as gone. Screenshots go to ``artifacts/`` (desktop and 390 px).

Needs ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``.ci/run``
installs it) and the ``playwright`` Python package (no browser download:
``executable_path`` points at Debian's Chromium). Skipped locally when either
is missing, never on CI (``CI`` set): there it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_demo import FAILOVER_BOUND, DemoRun

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = os.environ.get("SHOAL_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _missing(why: str) -> None:
    # never a skip: a browser test that did not run must not count as passing
    pytest.fail(f"browser test cannot run: {why} (.ci/run installs it)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A Playwright browser context on Debian's Chromium with a fresh profile."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _missing(f"{CHROMIUM} not found (apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[test]')")
        raise
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=FLAGS, viewport={"width": 1280, "height": 900}, timeout=60_000,
        )
        try:
            yield context
        finally:
            context.close()


def _owners(page: Any) -> dict[str, str]:
    rows = page.eval_on_selector_all(
        "#duties tbody tr", "rows => rows.map(r => [r.dataset.duty, r.dataset.owner])")
    return {duty: owner for duty, owner in rows}


def test_dashboard_shows_failover(browser: Any, tmp_path: Path) -> None:
    run = DemoRun(tmp_path)
    try:
        run.wait_for(r"all 12 duties owned and placed")
        page = browser.new_page()
        page.goto(run.url("demo-1") + "/", wait_until="domcontentloaded")
        page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
        page.wait_for_function(
            "document.querySelectorAll('#nodes li[data-status=live]').length === 3",
            timeout=20_000)
        assert page.inner_text("#node-count") == "3"
        leader = page.get_attribute("#leader", "data-leader")
        assert leader in ("demo-1", "demo-2")  # demo-3 may not lead
        page.wait_for_function(
            "document.querySelectorAll('#duties tbody tr').length === 12 && "
            "[...document.querySelectorAll('#duties tbody tr')].every(r => r.dataset.owner)",
            timeout=20_000)
        before = _owners(page)
        victim = "demo-2"  # not the node serving the page
        moved = sorted(d for d, o in before.items() if o == victim)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-before.png"), full_page=True)

        run.send("kill 2")
        killed_at = time.monotonic()
        page.wait_for_function(
            "(victim) => { const rows = [...document.querySelectorAll('#duties tbody tr')];"
            " return rows.length === 12 && rows.every(r => r.dataset.owner &&"
            " r.dataset.owner !== victim); }",
            arg=victim, timeout=FAILOVER_BOUND * 1000)
        took = time.monotonic() - killed_at
        page.wait_for_selector(f"#nodes li[data-node={victim}][data-status=gone]",
                               timeout=10_000)
        assert page.inner_text("#node-count") == "2"
        after = _owners(page)
        assert all(after[d] in ("demo-1", "demo-3") for d in moved), after
        assert after["rule-engine"] != "demo-3" and after["leader"] == "demo-1"
        assert took < FAILOVER_BOUND
        page.wait_for_timeout(300)  # let the event list render
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # the app's version on every node; a cordon shown, then gone with the uncordon
        meta = page.inner_text("#nodes li[data-node=demo-3]")
        assert "app 1.0" in meta and "shoal " in meta, meta
        config = str(run.workdir / "demo-1.yaml")
        for verb, shown in (("cordon", "true"), ("uncordon", "false")):
            res = subprocess.run([sys.executable, "-m", "shoal.cli.main", "node", verb, "demo-3",
                                  "--config", config], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            page.wait_for_selector(f"#nodes li[data-node=demo-3][data-cordoned={shown}]",
                                   timeout=10_000)
            pills = page.inner_text("#nodes li[data-node=demo-3] .name")
            assert ("cordoned" in pills) is (verb == "cordon"), pills

        phone = browser.new_page()
        phone.set_viewport_size({"width": 390, "height": 844})
        phone.goto(run.url("demo-3") + "/", wait_until="domcontentloaded")
        phone.wait_for_selector("body[data-loaded=true]", timeout=20_000)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
        phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    finally:
        run.cleanup()
