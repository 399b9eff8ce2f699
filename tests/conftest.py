"""Suite-wide guard: vzcpt's tests drive the real kernel as root."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _must_be_root() -> None:
    # ptrace of arbitrary tasks, namespaces, cgroups and /proc/sys writes all
    # need root; without it every test would fail for the same reason.
    if os.geteuid() != 0:
        pytest.skip("vzcpt tests need root: run scripts/test as root")


from terminal import tmux  # noqa: E402,F401  a private tmux server, for terminal tests
from vehost import host  # noqa: E402,F401  the VE fixture, for every test module
