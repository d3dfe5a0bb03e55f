"""The end-to-end tests' one hook: the hostile-input catalogue's count in the run's summary."""

from __future__ import annotations

import pytest

CATALOGUE_TEST = "test_hostile_catalogue.py::test_hostile_input["


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print "hostile-input catalogue: N cases, P passed, F failed" when any case ran."""
    outcomes: dict[str, str] = {}
    for outcome, reports in terminalreporter.stats.items():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            if CATALOGUE_TEST not in nodeid:
                continue
            when = getattr(report, "when", "call")
            # A failure or error in any phase decides; a pass counts only for the call.
            if outcome in {"failed", "error"} or (outcome == "passed" and when == "call"):
                if outcomes.get(nodeid) not in {"failed", "error"}:
                    outcomes[nodeid] = outcome
            elif outcome not in {"passed", ""}:
                outcomes.setdefault(nodeid, outcome)
    if not outcomes:
        return
    tally = {name: sum(1 for o in outcomes.values() if o == name) for name in ("passed", "failed")}
    others = len(outcomes) - tally["passed"] - tally["failed"]
    line = (
        f"hostile-input catalogue: {len(outcomes)} cases, {tally['passed']} passed, "
        f"{tally['failed']} failed"
    )
    if others:
        line += f", {others} other (error, skipped or xfailed)"
    terminalreporter.write_line(line)
