"""A subreaper that adopts orphans whose session and process group leaders are gone.

- a job-control pipeline `true | sleep 1000` in its own process group, whose
  leader (`true`) has exited: the sleep is in a group without a leader;
- `setsid sh -c 'sleep 1000 & exit'`: the sleep is adopted by us and stays in
  a session whose leader (the sh) is gone.
Writes READY to the report file once the leaders are gone, then reaps forever.
"""

import contextlib
import ctypes
import os
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
QUIET = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def main() -> None:
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    subprocess.Popen(["bash", "-c", "set -m; true | sleep 1000 & wait"], **QUIET)
    subprocess.Popen(["setsid", "sh", "-c", "sleep 1000 & exit 0"], **QUIET)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)  # reap the leaders as they exit
        time.sleep(0.02)
    with open(sys.argv[1], "a") as report:
        report.write("READY\n")
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(1)


if __name__ == "__main__":
    main()
