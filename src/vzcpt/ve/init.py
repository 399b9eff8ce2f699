"""The VE's init: pid 1 of its pid namespace, which reaps orphans and shuts the VE down.

It runs inside the VE with the host's Python (/usr/bin/python3 is bind-mounted
read-only from the host): nothing of vzcpt needs to be installed in the VE.
Its source arrives on standard input (a pipe, replaced by /dev/null once
read), so its command line stays short: `init -c <BOOT>`. On SIGTERM it asks
every process to stop, waits a little, kills what is left and exits, which
ends the pid namespace.
"""

from __future__ import annotations

SOURCE = r"""
import os, signal, sys, time

def shutdown(signo, frame):
    os.kill(-1, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            break
    os.kill(-1, signal.SIGKILL)
    os._exit(0)

signal.signal(signal.SIGTERM, shutdown)
signal.signal(signal.SIGCHLD, lambda signo, frame: None)  # wakes pause() to reap
signal.signal(signal.SIGINT, signal.SIG_IGN)
os.chdir("/")
sys.argv[0] = "init"
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        signal.pause()
    except InterruptedError:
        pass
"""

INTERPRETER = "/usr/bin/python3"
BOOT = "import os,sys;s=sys.stdin.read();os.dup2(os.open('/dev/null',os.O_RDWR),0);exec(s)"


def argv() -> list[str]:
    """The command line of the VE's init (argv[0] 'init', as ps shows it)."""
    return ["init", "-c", BOOT]
