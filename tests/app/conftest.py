"""Fixtures for the window tests: a private runs folder, private settings, and one window
that has opened the tiny Llama through a real `inspect` job in the worker (shared by the
tests of this folder: starting a worker costs seconds, mostly importing torch)."""

from __future__ import annotations

import os

import pytest
from PySide6.QtCore import QEventLoop, QSettings, QTimer

JOB_TIMEOUT_MS = 420_000     # a guard against a hung job; a Ray search on a busy 2-core machine takes ~3 min


@pytest.fixture(scope="session")
def app(qapp):
    """pytest-qt's QApplication with Bitsmith's names and style sheet, set once."""
    from bitsmith.app.main import make_app

    return make_app()


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    old = os.environ.get("BITSMITH_RUNS")
    os.environ["BITSMITH_RUNS"] = str(root)
    yield root
    if old is None:
        os.environ.pop("BITSMITH_RUNS", None)
    else:
        os.environ["BITSMITH_RUNS"] = old


def wait_for_signal(signal, start, timeout_ms: int = JOB_TIMEOUT_MS) -> tuple:
    """Call `start()`, then spin the event loop until `signal` fires; its arguments."""
    loop, got = QEventLoop(), []

    def fired(*args):
        got.append(args)
        loop.quit()

    signal.connect(fired)
    QTimer.singleShot(timeout_ms, loop.quit)
    try:
        start()
        if not got:
            loop.exec()
    finally:
        signal.disconnect(fired)
    assert got, f"timed out after {timeout_ms} ms"
    return got[0]


def run_job_to_end(window, start) -> str:
    """Start a job with `start()` and wait until the worker finishes; the outcome."""
    def go():
        assert start() is not None, window.runs.message.text()
    return wait_for_signal(window.client.finished, go)[0]


@pytest.fixture(scope="session")
def shared_window(app, runs_root, tmp_path_factory, tiny_llama):
    """One main window with the tiny Llama open, for the whole session."""
    from bitsmith.app.main_window import MainWindow

    settings = QSettings(str(tmp_path_factory.mktemp("settings") / "bitsmith.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings)
    win.show()
    outcome = run_job_to_end(win, lambda: win.open_model(str(tiny_llama)))
    assert outcome == "done", win.runs.message.text()
    yield win
    win.close()
    win.deleteLater()


@pytest.fixture
def opened(shared_window):
    """The shared window, its plan reset to uniform 4-bit group 64 and no filter."""
    w = shared_window
    assert not w.client.running
    w.filter.setText("")
    w.sel_group.setValue(64)
    w.set_uniform(4)
    w.tabs.setCurrentIndex(0)
    return w


# Helpers as fixtures: tests import nothing from conftest (pytest runs in importlib mode,
# with the repository root off sys.path).
@pytest.fixture(scope="session")
def wait_for():
    return wait_for_signal


@pytest.fixture(scope="session")
def run_to_end():
    return run_job_to_end
