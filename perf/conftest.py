"""pytest setup for the benchmark suite in perf/ (not part of the normal test run).

The project's ``testpaths`` is ``tests``, so a plain ``pytest`` never collects this
directory; run it explicitly: ``pytest perf/ --benchmark-only``. Every test here carries the
``perf`` marker, so ``pytest tests perf -m "not perf"`` skips them as well.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
for _p in (str(PERF_DIR), str(REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "perf: benchmark in perf/; run with `pytest perf/ --benchmark-only`"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().parent == PERF_DIR:
            item.add_marker(pytest.mark.perf)


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh directory on the same filesystem as the checkout (never tmpfs), removed after."""
    parent = PERF_DIR / ".scratch"
    parent.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
