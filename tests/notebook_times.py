"""A pytest plugin for the notebook run: each notebook's total time, printed at the end (slowest first).

Loaded by `make test-notebooks` (`-p notebook_times`); it reports and never fails on time: timing targets
belong to the benchmark (`python -m flbook.bench`)."""
from __future__ import annotations

from collections import defaultdict

_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report) -> None:
    _seconds[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not _seconds:
        return
    terminalreporter.section("seconds per notebook")
    for path, seconds in sorted(_seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_seconds.values()):8.1f}  in all (summed over the workers)")
