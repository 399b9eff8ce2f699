"""What every command line shares: one-line errors, statistics output."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

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
    except OSError as exc:
        # An error from the system that no layer explained: still one line,
        # unless VZCPT_DEBUG asks for the whole story.
        if os.environ.get("VZCPT_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def exit_at_once(code: int) -> NoReturn:
    """End the program now, without the interpreter's teardown.

    Everything of ours is closed, joined and written by the time a command
    returns; what is left is freeing, one by one, every object a dump or a
    restore made (thousands per process with many mappings), which the
    kernel does at once when the process ends.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 1
    os._exit(code)


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
    if stats.pages_precopied:
        print(f"  {'pages pre-copied:':<20} {stats.pages_precopied:10d}", file=out)
        print(f"  {'pre-copied kept:':<20} {stats.pages_precopy_kept:10d}", file=out)
    if stats.drained or "drain" in stats.times:
        print(f"  {'drained connections:':<20} {stats.drained:10d}", file=out)
    for line in stats.warnings:
        print(f"  warning: {line}", file=out)


class ProgressLine:
    """One self-rewriting line on a terminal while a long operation runs; silent otherwise."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, what: str, done_bytes: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.1:
            return
        self._last = now
        sys.stderr.write(f"\r\033[K{what}: {done_bytes / (1 << 20):,.0f} MiB")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()
