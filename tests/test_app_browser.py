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
PAGES = ["", "Patching", "Attention", "Pruning", "Bigram", "Circuit", "Features", "Live", "Dictionary", "Probes", "Lens", "DLA", "Steering"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SOCKETS = Path(__file__).resolve().parent / "socket_recorder"  # a sitecustomize that logs every connect and lookup


def start_app(runs: Path, port: int, socket_log: Path, *extra: str, output: Path | None = None) -> subprocess.Popen:
    """``interp app`` as a user starts it, its socket calls recorded to ``socket_log`` (and what it
    prints to ``output``)."""
    env = {**os.environ, "INTERP_SOCKET_LOG": str(socket_log),
           "PYTHONPATH": os.pathsep.join([str(SOCKETS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "interp.ui.cli", "app", "--runs", str(runs), "--port", str(port),
                             "--model", "toy-induction", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(output, "w") if output else subprocess.DEVNULL)


def wait_healthy(url: str) -> None:
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail("the Streamlit server did not come up within 60 s")


def external(log: Path) -> list:
    """The recorded socket calls that reach anything but this machine (a loopback address, a
    local socket file, or a lookup of localhost / 127.0.0.1)."""
    import ipaddress
    import json

    local_names = {"localhost", "127.0.0.1", "::1", "", None}
    bad = []
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, address = json.loads(line)
        if kind == "loaded":
            continue
        host = address if isinstance(address, str) else address[0]
        if kind == "connect" and isinstance(address, str):
            continue  # a unix socket: a file on this machine
        if host in local_names:
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        bad.append((kind, address))
    return bad


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), as .ci/run does")
    runs = build_runs(tmp_path_factory.mktemp("runs"))
    port = _free_port()
    log = tmp_path_factory.mktemp("sockets") / "server.jsonl"
    printed = log.parent / "server.log"
    process = start_app(runs, port, log, output=printed)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url, log, printed
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
    url = server[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/{page_name}", wait_until="networkidle", timeout=120_000)
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


def test_the_server_never_reached_beyond_this_machine(server):
    """After every page was browsed (and the Live page ran AtP*): every socket the server opened,
    every datagram and every address lookup stayed on this machine."""
    log = server[1]
    assert log.exists() and '"loaded"' in log.read_text(), "the socket recorder was not loaded in the server"
    assert external(log) == []


def test_no_page_logged_a_deprecation_warning_or_a_traceback(server):
    """After every page was browsed: the server printed no deprecation warning (Streamlit's
    ``use_container_width`` warned 62 times a session)."""
    printed = server[2].read_text()
    assert "deprecat" not in printed.lower(), [line for line in printed.splitlines() if "eprecat" in line][:3]
    # not even one Streamlit recovered from (a table it had to fix); a tab closed while the server still
    # wrote to it (older Streamlit logs tornado's WebSocketClosedError) is the browser's doing, not a page's
    tracebacks = [block for block in printed.split("Traceback (most recent call last):")[1:]
                  if "WebSocketClosedError" not in block and "StreamClosedError" not in block]
    assert not tracebacks, tracebacks[0][:2000]


def test_stopping_interp_app_by_its_process_id_stops_the_server(tmp_path):
    """``interp app`` becomes the server process, listening on 127.0.0.1 only; SIGTERM to that
    process id closes the port."""
    port = _free_port()
    process = start_app(tmp_path, port, tmp_path / "sockets.jsonl")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        with pytest.raises(OSError):  # not on this machine's other addresses
            with socket.create_connection((_other_address(), port), timeout=2):
                pass
    finally:
        process.terminate()
        process.wait(timeout=20)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
    assert '"loaded"' in (tmp_path / "sockets.jsonl").read_text() and external(tmp_path / "sockets.jsonl") == []


def _other_address() -> str:
    """An address of this machine that is not loopback (a UDP socket's local address, no packet sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback address to try")
    return address
