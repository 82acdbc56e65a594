"""A JupyterLab server on a copy of notebooks/ and a headless Chromium page on it, for the whole UI session.

FLBOOK_UI_NOTEBOOKS names another folder of notebooks to test instead of notebooks/."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("playwright", reason="the UI tests need the ui extra: pip install -e '.[ui]' (make test-ui does)")
from playwright.sync_api import Page, sync_playwright  # noqa: E402

from labdriver import Timeouts, start_lab  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(os.environ.get("FLBOOK_UI_NOTEBOOKS", ROOT / "notebooks")).resolve()
SCREENSHOTS = ROOT / "ui-screenshots"
TOOK_SCREENSHOTS = pytest.StashKey[bool]()
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: no browser download
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SERVER_START_S = 120
SERVER_STOP_S = 30
SESSION_BUDGET_S = 35 * 60  # about 75 s per notebook; past it the rest fail at once, so a hung kernel cannot run on
# JupyterLab settings: every cell stays in the page (not only the visible ones), and no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        '{"checkForUpdates": false, "fetchNews": "false"}',
}


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_with_parent() -> None:
    """In the server's process: get SIGTERM when the test process dies, so no server outlives a killed run."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG (Linux)


def wait_until_serving(server: subprocess.Popen, url: str, log: Path) -> None:
    """Poll the server's status endpoint until it answers; fail with its log if it exits or takes too long."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}api/status", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen, url: str) -> None:
    """Ask the server to shut its kernels down and exit; terminate it, then kill it, if it does not."""
    def request_shutdown() -> None:
        urllib.request.urlopen(urllib.request.Request(f"{url}api/shutdown", method="POST"), timeout=5).close()

    for stop in (request_shutdown, server.terminate, server.kill):
        try:
            stop()
            server.wait(SERVER_STOP_S)
            return
        except (OSError, subprocess.TimeoutExpired):
            continue


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run tests that take `notebook` once per notebook under notebooks/ (a path relative to it)."""
    if "notebook" in metafunc.fixturenames:
        paths = sorted(path.relative_to(NOTEBOOKS).as_posix() for path in NOTEBOOKS.rglob("*.ipynb")
                       if ".ipynb_checkpoints" not in path.parts)
        metafunc.parametrize("notebook", paths, ids=[Path(path).stem for path in paths])


@pytest.fixture(scope="session")
def lab_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start JupyterLab without a token on a free loopback port, serving a copy of notebooks/; stop it after."""
    home = tmp_path_factory.mktemp("jupyterlab")
    root = home / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name, text in LAB_SETTINGS.items():
        (home / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "settings" / name).write_text(text)
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}  # keep the inline backend
    env.update(PYTHONHASHSEED="0", JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
               "--ServerApp.disable_check_xsrf=True",  # lets stop_server's request in: loopback, this test only
               f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={home / 'settings'}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = home / "jupyterlab.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                  stderr=subprocess.STDOUT, preexec_fn=stop_with_parent)
    try:
        wait_until_serving(server, url, log)
        yield url
    finally:
        stop_server(server, url)


@pytest.fixture(scope="session")
def lab(lab_url: str) -> Iterator[Page]:
    """One headless Chromium page with JupyterLab loaded; notebooks are opened and closed in it in turn."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test-ui does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page()
            start_lab(page, lab_url, Timeouts().open)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="session")
def deadline() -> float:
    """When the UI session's time budget runs out (a monotonic clock reading)."""
    return time.monotonic() + SESSION_BUDGET_S


@pytest.fixture(autouse=True)
def _within_budget(deadline: float) -> None:
    """Fail a test at once when the session has run past its budget."""
    if time.monotonic() > deadline:
        pytest.fail(f"the UI tests ran past their budget of {SESSION_BUDGET_S // 60} minutes")


@pytest.fixture(scope="session")
def screenshots(pytestconfig: pytest.Config) -> Path:
    """The git-ignored folder for this run's screenshots, emptied of an earlier run's."""
    pytestconfig.stash[TOOK_SCREENSHOTS] = True
    SCREENSHOTS.mkdir(exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    return SCREENSHOTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say where this run's screenshots are, so a person can look at them."""
    if config.stash.get(TOOK_SCREENSHOTS, False):
        terminalreporter.write_line(f"UI screenshots: {SCREENSHOTS}")
