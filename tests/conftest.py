"""Shared fixtures: the real peanut data and small checkpoints built from it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weedseg.data import open_dataset
from weedseg.data.locate import find_dataset_root

# The trainer's fixtures (random_checkpoint, trained_run) import torch; the inference-only install has none, and
# its tests (test_predict.py, test_engines.py) run without them.
pytest_plugins = ["train_fixtures"] if importlib.util.find_spec("torch") else []

# Tests that need a real training run or a browser are end-to-end: marked slow, so `make test-quick`
# (pytest -m "not slow") skips them.
SLOW_FIXTURES = {"trained_run"}
SLOW_MODULES = {"test_app_browser.py"}
# A Ray driver leaves Ray's native threads in the pytest process after ray.shutdown(): the tests that start Ray
# in-process run last.
LAST_MODULES = {"test_cluster.py"}
# Tests marked own_process send signals to their own process; after OpenVINO's tests had run in the same pytest
# process, that crashed it with SIGSEGV (no Python traceback). They run in a fresh pytest process of their own.
OWN_PROCESS = "WEEDSEG_TEST_OWN_PROCESS"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.path.name in LAST_MODULES)  # stable: the order is otherwise kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A test marked own_process runs in a fresh pytest process; its result is that process's."""
    if pyfuncitem.get_closest_marker("own_process") is None or os.environ.get(OWN_PROCESS) == pyfuncitem.nodeid:
        return None
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
                          cwd=pyfuncitem.config.rootpath, env={**os.environ, OWN_PROCESS: pyfuncitem.nodeid},
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"in its own process (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
    return True


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory) -> None:
    """`--engine auto` remembers its choices under $XDG_CACHE_HOME: the tests keep theirs out of ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def peanut_root() -> Path:
    """The real peanut dataset under $WEEDSEG_DATA (`make test` and CI set it to ../shared/field_data)."""
    return find_dataset_root("peanut")


@pytest.fixture(scope="session")
def peanut(peanut_root):
    """The peanut dataset opened with its committed split."""
    return open_dataset("peanut", peanut_root)
