"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture
def say(request):
    """Write a line to the terminal even when output is captured."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(text):
        if reporter is None or capture is None:
            print(text)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(text)
    return write
