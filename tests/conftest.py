"""The demo data sets as module fixtures shared by the network tests, and, after a run, the
multiply-accumulates each regression test checked (tests/test_regression.py records them
as the user property ``macs_checked``; properties travel back from pytest-xdist's workers,
printed output does not)."""

import pytest

from olmac.network import demo_data


@pytest.fixture(scope="module")
def mlp_data():
    return demo_data("mlp")


@pytest.fixture(scope="module")
def cnn_data():
    return demo_data("cnn")



def pytest_terminal_summary(terminalreporter):
    lines = [f"{report.nodeid}: {dict(report.user_properties)['macs_checked']:,} MACs checked, "
             "0 mismatches"
             for report in terminalreporter.stats.get("passed", [])
             if report.when == "call" and "macs_checked" in dict(report.user_properties)]
    if lines:
        terminalreporter.section("MACs checked per configuration")
        for line in lines:
            terminalreporter.write_line(line)
