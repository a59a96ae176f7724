"""The app served on localhost and driven by Debian's chromium through Playwright: every page renders
its chart and no Streamlit exception box. Screenshots land in test-artifacts/app/."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app_runs import build_runs

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "app"
PAGES = ["", "Patching", "Attention", "Pruning", "Bigram", "Circuit", "Features", "Live"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), as .ci/run does")
    runs = build_runs(tmp_path_factory.mktemp("runs"))
    port = _free_port()
    env = {**os.environ, "INTERP_RUNS_DIR": str(runs), "INTERP_APP_MODEL": "toy-induction"}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"), "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the Streamlit server did not come up within 60 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.mark.parametrize("page_name", PAGES)
def test_page_renders_in_chromium(server, browser, page_name):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/{page_name}", wait_until="networkidle", timeout=120_000)
    if page_name == "Live":
        page.get_by_role("button", name="Run AtP*").click()
    wanted = '[data-testid="stDataFrame"]' if page_name == "" else ".js-plotly-plot"
    page.wait_for_selector(wanted, timeout=120_000)
    page.wait_for_timeout(1000)  # let the charts finish drawing before the screenshot
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{page_name or 'Runs'}.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    if page_name:
        assert page.locator(".js-plotly-plot").count() >= 1
    else:
        assert page.get_by_text("heads-exact").count() >= 1
    page.close()
