"""The benchmark's processes: start the holder, find its tree, check it, kill and reap it.

The benchmark makes itself a child subreaper, so every orphan of a holder tree
(the children of a killed root; a restored tree once vzcpt or CRIU has exited)
becomes its child and can be reaped at once. Without that, init reaps them when
it gets round to it, and a restore may find the saved pids still taken.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def compile_holder(source: Path, out: Path) -> Path:
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(source)], check=True)
    return out


def start_holder(holder: Path, mode: str, count: int, ready: Path) -> subprocess.Popen[bytes]:
    """Start the holder in its own session with no terminal and /dev/null for stdio,
    so that CRIU can dump it without --shell-job and neither tool sees a tty or pipe."""
    return subprocess.Popen(
        [str(holder), mode, str(count), str(ready)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def wait_for_line(path: Path, tag: str, timeout: float, alive: int | None = None) -> str:
    """Wait until PATH holds "TAG value"; return the value. ALIVE: a pid whose death
    means the line will never come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            words = path.read_text().split()
            if len(words) == 2 and words[0] == tag:
                return words[1]
        if alive is not None and not is_alive(alive):
            raise RuntimeError(f"process {alive} died before writing {tag} to {path}")
        time.sleep(0.02)
    raise RuntimeError(f"no {tag} in {path} after {timeout:.0f} s")


def state(pid: int) -> str | None:
    """The one-letter state of PID, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2]


def is_alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def tree_pids(root: int) -> list[int]:
    """ROOT and all its descendants, from /proc/PID/task/TID/children."""
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in found or state(pid) is None:
            continue
        found.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    todo.extend(
                        int(c)
                        for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    )
    return found


def map_count(pid: int) -> int:
    with open(f"/proc/{pid}/maps", "rb") as maps:
        return sum(1 for _ in maps)


def kill_tree(pids: set[int], leader: int) -> None:
    """SIGKILL the pids given and the descendants of LEADER, but only those in
    LEADER's session: the holder starts one, and both tools restore it, so a pid
    reused by an unrelated process in the meantime is never touched."""
    candidates = pids | set(tree_pids(leader))
    with contextlib.suppress(OSError):
        if os.getpgid(leader) == leader and os.getsid(leader) == leader:
            os.killpg(leader, signal.SIGKILL)
    for pid in candidates:
        with contextlib.suppress(OSError):
            if os.getsid(pid) == leader:
                os.kill(pid, signal.SIGKILL)


def our_children() -> set[int]:
    """Every process whose parent is this one. As a subreaper, that includes whatever
    a killed tool left behind (say, tasks of a restore interrupted half way)."""
    me = str(os.getpid())
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith("PPid:"):
                        if line.split()[1] == me:
                            found.add(int(entry))
                        break
    return found


def kill_children() -> None:
    """SIGKILL and reap every child. Only when no subprocess.Popen of ours still runs."""
    children = our_children()
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    reap(children)
    reap_orphans()


def reap(pids: set[int], timeout: float = 20.0) -> set[int]:
    """Wait until every pid given is gone (reaping those that are our children).
    Returns the pids still there after TIMEOUT seconds."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if state(pid) is None:
                left.discard(pid)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return left


@contextlib.contextmanager
def reaping(pids: set[int]) -> Iterator[None]:
    """Reap PIDS as soon as they die, while the body runs, as a shell reaps its jobs.
    vzcpt's dump waits (up to 5 s) for the parents of the tree it killed to reap it;
    a benchmark that reaped only afterwards would be timing its own delay."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            stop.wait(0.002)

    thread = threading.Thread(target=loop, name="reaper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reap_orphans() -> None:
    """Reap any child that is already dead. Only call this when no subprocess.Popen
    of ours is still running, or it would steal that process's exit status."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def timed_syncfs(path: Path) -> float:
    """Seconds that syncfs(2) takes to write back the file system holding `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        started = time.monotonic()
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs of {path}")
        return time.monotonic() - started
    finally:
        os.close(fd)
