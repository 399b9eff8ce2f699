"""What every command line shares: one-line errors, statistics output."""

from __future__ import annotations

import sys
from collections.abc import Callable

from vzcpt.errors import VzcptError
from vzcpt.resources.context import Stats


def run(prog: str, body: Callable[[], int]) -> int:
    """Run a command; an expected failure is one line on stderr and a non-zero exit."""
    try:
        return body()
    except VzcptError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        print(f"{prog}: error: the other end of the pipe went away", file=sys.stderr)
        return 1


def print_stats(stats: Stats) -> None:
    """Statistics go to stderr, so `--dumpfile -` keeps stdout for the dump."""
    out = sys.stderr
    for phase, seconds in stats.times.items():
        print(f"  {phase + ' time:':<20} {seconds * 1000:10.1f} ms", file=out)
    print(f"  {'processes:':<20} {stats.processes:10d}", file=out)
    print(f"  {'threads:':<20} {stats.threads:10d}", file=out)
    print(f"  {'files:':<20} {stats.files:10d}", file=out)
    print(f"  {'pages:':<20} {stats.pages:10d}", file=out)
    print(f"  {'zero pages skipped:':<20} {stats.pages_zero:10d}", file=out)
    print(f"  {'bytes:':<20} {stats.bytes:10d}", file=out)
    for line in stats.warnings:
        print(f"  warning: {line}", file=out)
