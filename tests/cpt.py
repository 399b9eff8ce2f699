"""Running the vzcpt command line from tests, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VZCPT = [sys.executable, "-m", "vzcpt.cli.vzcpt"]


def vzcpt(
    *args: str | Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `vzcpt ARGS`; fail the test with its stderr when it fails and check is set."""
    result = subprocess.run(
        [*VZCPT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"vzcpt {' '.join(map(str, args))} failed: {result.stderr.strip()}")
    return result
