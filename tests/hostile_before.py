"""A pytest plugin that records, per hostile-input test, how the code under test behaved when the
test failed: the "before" column of docs/reliability.md § "Bad inputs".

Measured once against main (the commit before the audit) with this suite copied into a main
checkout::

    PYTHONPATH=<main checkout> HOSTILE_BEFORE_OUT=before.json \\
        python -m pytest -p tests.hostile_before tests/test_hostile_inputs.py tests/test_hostile_loaders.py
    python -m tests.hostile --before before.json   # the table with the "before" column
"""

from __future__ import annotations

import json
import os
import re

import pytest

RESULTS: dict[str, str] = {}
NEW_META = ("'dropped'", "'notes'", "'ignored_columns'")


def category(excinfo, nodeid: str) -> str:
    if excinfo is None:
        return "same"
    e = excinfo.value
    msg, name = str(e), type(e).__name__
    if name == "ExceptionGroup" or "Hypothesis found" in msg:
        return "failing examples found"
    if name == "TimeoutExpired":
        return "typo ignored: the run went ahead"
    if "DID NOT RAISE" in msg:
        return "accepted silently"
    if name == "KeyError" and any(k in msg for k in NEW_META):
        return "accepted, not counted/noted"
    if name == "AssertionError":
        if "Traceback" in msg:
            return "traceback"
        if msg.startswith("no fix in"):
            return "error without a fix"
        if " does not match " in msg:
            return "error, other message"
        m = re.match(r"(\w+): ", msg)
        if m and m.group(1).endswith("Error") and m.group(1) not in ("DataError", "BenchError"):
            return f"crash ({m.group(1)})"
        if "test_cli_" in nodeid or "test_run_flag" in nodeid:
            return "no clean error"
        return "accepted, not counted/noted or other values"
    if name in ("DataError", "BenchError"):
        return "refused"
    return f"crash ({name})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.failed and item.nodeid not in RESULTS):
        RESULTS[item.nodeid] = category(call.excinfo, item.nodeid) if rep.failed else "same"


def pytest_sessionfinish(session):
    out = os.environ.get("HOSTILE_BEFORE_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(RESULTS, f, indent=0, sort_keys=True)
