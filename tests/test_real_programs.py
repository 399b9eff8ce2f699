"""Real programs survive `vzcpt dump` and `vzcpt restore`, in every CLI form.

A Python interpreter running threads, a bash pipeline, `sleep 1000` and a C
program holding 1 GiB: each is started in its own session, dumped (the
original must be gone from /proc), restored with the same pids and tids, and
checked from its own output to have continued exactly where it stopped.

The programs are not our children after a restore: `Session` finds them by
their session id (the root leads its session) and kills them by pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from cpt import VZCPT, vzcpt
from harness import Program, all_processes, read_stat

REAL_DIR = Path(__file__).resolve().parent / "programs" / "real"
COUNTER = REAL_DIR / "counter.py"
PIPELINE = REAL_DIR / "pipeline.sh"
POLL_S = 0.01


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `cond` until it holds; fail the test naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


def proc_field(pid: int, name: str, tid: int | None = None) -> str:
    """One field of /proc/PID[/task/TID]/status ("" if the task is gone)."""
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    try:
        text = Path(path).read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return ""


def thread_ids(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def thread_comms(pid: int) -> dict[int, str]:
    out = {}
    for tid in thread_ids(pid):
        with contextlib.suppress(OSError):
            out[tid] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    return out


def thread_states(pid: int) -> dict[int, str]:
    """tid -> one-letter state of every thread of pid."""
    return {tid: proc_field(pid, "State", tid)[:1] for tid in thread_ids(pid)}


def kill_session(sid: int, also: Iterable[int] = (), timeout: float = 15.0) -> None:
    """SIGKILL every process of session `sid` (and the pids in `also`), then
    wait until none is alive: reaped, or a zombie left for its parent."""
    me = os.getpid()
    procs = all_processes()
    targets = {p for p, i in procs.items() if i.session == sid or i.pgrp == sid}
    targets |= set(also) & set(procs)
    targets -= {me, os.getppid(), 1}
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def dead() -> bool:
        return all((i := read_stat(p)) is None or i.state in "ZX" for p in targets)

    wait_for(f"pids {sorted(targets)} to die", dead, timeout)


class Session:
    """A command run in its own session, with no pipe to the test.

    stdin is /dev/null and stdout/stderr go to a log file: a tree with a pipe
    to the outside cannot be dumped.  A thread reaps the original as soon as
    it dies, so its pid is free for the restore at once (as it would be for a
    daemon whose parent is init).
    """

    def __init__(self, argv: list[str], tmp_path: Path, name: str) -> None:
        self.name = name
        self.log_path = tmp_path / f"{name}.log"
        with open(self.log_path, "ab") as log, open(os.devnull, "rb") as devnull:
            self._popen = subprocess.Popen(
                argv, stdin=devnull, stdout=log, stderr=log, cwd=tmp_path, start_new_session=True
            )
        self.pid = self._popen.pid
        self._reaper = threading.Thread(target=self._popen.wait, daemon=True)
        self._reaper.start()
        self._seen: dict[int, int] = {}  # pid -> starttime of every member seen

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    def members(self) -> set[int]:
        """Live processes of the session (zombies included)."""
        procs = all_processes()
        found = {p for p, i in procs.items() if i.session == self.pid}
        for p in found:
            self._seen[p] = procs[p].starttime
        return found

    def alive(self) -> bool:
        info = read_stat(self.pid)
        return info is not None and info.state not in "ZX"

    def wait_gone(self, timeout: float = 15.0) -> None:
        """Wait until every process seen in the session has left /proc, so
        a restore can take its pid again (orphans are reaped by init)."""
        self.members()

        def gone() -> bool:
            left = [p for p, st in self._seen.items() if (i := read_stat(p)) and i.starttime == st]
            return not left and not Path(f"/proc/{self.pid}").exists()

        wait_for(f"{self.name} (pid {self.pid}) to leave /proc", gone, timeout)

    def kill(self) -> None:
        seen = {p for p, st in self._seen.items() if (i := read_stat(p)) and i.starttime == st}
        kill_session(self.pid, seen)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


# --- the Python counter --------------------------------------------------


def chain_start(k: int) -> bytes:
    return hashlib.sha256(b"worker-%d" % k).digest()


def chain_step(h: bytes, i: int) -> bytes:
    return hashlib.sha256(h + i.to_bytes(8, "little")).digest()


def complete_lines(path: Path, start: int = 0) -> list[str]:
    """The complete lines of the file from byte `start` on."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").split("\n")[:-1]


def counter_progress(
    out: Path, start: int = 0, first: dict[int, int] | None = None
) -> dict[int, int]:
    """Check the counter's output from byte `start`; return worker -> last step.

    Every worker's steps must follow each other one by one (no reset, no
    repeat, no gap) and every hash must be the next link of its chain: a
    line is proof that the worker's memory was intact when it wrote it.
    `first` optionally gives the step each worker must start at.  OK/FAIL
    lines of the memory check are skipped (FAIL fails the test).
    """
    last: dict[int, int] = {}
    chains: dict[int, bytes] = {}
    for n, line in enumerate(complete_lines(out, start)):
        if line in ("READY", "OK"):
            continue
        assert not line.startswith("FAIL"), f"{out}: {line}"
        k_s, i_s, digest = line.split()
        k, i = int(k_s), int(i_s)
        if k not in last:
            i0 = 1 if first is None else first.get(k, 1)
            if start == 0 or first is not None:
                assert i == i0, f"{out} line {n}: worker {k} starts at step {i}, want {i0}"
            h = chain_start(k)
            for j in range(1, i):
                h = chain_step(h, j)
            chains[k] = h
        else:
            assert i == last[k] + 1, f"{out} line {n}: worker {k} went from step {last[k]} to {i}"
        chains[k] = chain_step(chains[k], i)
        assert digest == chains[k].hex(), f"{out} line {n}: worker {k} step {i} has a wrong hash"
        last[k] = i
    return last


def start_counter(tmp_path: Path, threads: int = 4, mib: int = 0) -> tuple[Session, Path]:
    out = tmp_path / "progress"
    argv = [sys.executable, str(COUNTER), str(out), str(threads), str(mib)]
    prog = Session(argv, tmp_path, "counter")
    try:
        wait_for("the counter's READY", lambda: "READY" in complete_lines(out))

        def going() -> bool:
            now = counter_progress(out)
            return len(now) == threads and min(now.values()) > 10

        wait_for(f"all {threads} workers to make progress", going)
    except BaseException:
        prog.kill()
        raise
    return prog, out


def wait_progress(
    out: Path, beyond: dict[int, int], steps: int = 20, start: int = 0
) -> dict[int, int]:
    """Wait until every worker is `steps` past `beyond` (checking the output
    from byte `start` on); return the progress."""

    def advanced() -> bool:
        now = counter_progress(out, start)
        return all(now.get(k, 0) >= v + steps for k, v in beyond.items())

    wait_for(f"every worker to advance {steps} steps past {beyond}", advanced)
    return counter_progress(out, start)


def restore(dumpfile: Path | str, *extra: str) -> int:
    return int(vzcpt("restore", "--dumpfile", dumpfile, *extra).stdout.strip())


# --- the tests -----------------------------------------------------------


def test_python_threads_continue(tmp_path: Path) -> None:
    """A multi-threaded Python computation goes on from the step it was at,
    with the same pid, tids and thread names."""
    prog, out = start_counter(tmp_path)
    with prog:
        tids = thread_ids(prog.pid)
        comms = thread_comms(prog.pid)
        assert len(tids) == 5, comms
        dump = tmp_path / "dump.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump)
        prog.wait_gone()
        before = counter_progress(out)  # final: the original is dead
        assert restore(dump) == prog.pid
        assert thread_ids(prog.pid) == tids
        assert thread_comms(prog.pid) == comms
        after = wait_progress(out, before)
        # counter_progress checked the whole file: each worker went on from
        # its step before the dump, one step at a time, with an intact chain.
        assert after.keys() == before.keys()
        assert proc_field(prog.pid, "TracerPid") == "0"


def bash_pids(prog: Session) -> set[int]:
    return {p for p in prog.members() if (i := read_stat(p)) and i.comm == "bash"}


def numbers(out: Path) -> list[int]:
    return [int(x) for x in complete_lines(out)]


def test_bash_pipeline_continues(tmp_path: Path) -> None:
    """Both sides of a shell pipeline, and a `sleep` child caught mid-nap,
    go on: the numbering continues without a reset, a repeat or a gap."""
    out = tmp_path / "numbers"
    with Session(["bash", str(PIPELINE), str(out)], tmp_path, "pipeline") as prog:
        wait_for("10 numbers", lambda: len(numbers(out)) >= 10)
        # The script and the two sides of the pipe; a fourth "bash" is a child
        # forked for `sleep` that has not exec'd yet: wait for a quiet moment.
        wait_for("the three shells", lambda: len(bash_pids(prog)) == 3)
        shells = bash_pids(prog)
        dump = tmp_path / "dump.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump)
        prog.wait_gone()
        count = len(numbers(out))
        assert restore(dump) == prog.pid
        assert shells <= bash_pids(prog)  # (plus perhaps a fork caught before its exec)
        wait_for("15 more numbers", lambda: len(numbers(out)) >= count + 15)
        got = numbers(out)
        assert got == list(range(len(got))), f"numbering broke around {count}: {got[count - 5 :]}"


def test_sleep_still_sleeping(tmp_path: Path) -> None:
    """`sleep 1000` is restored in its nanosleep, with the same pid and argv."""
    with Session(["sleep", "1000"], tmp_path, "sleep") as prog:
        wait_for("sleep to sleep", lambda: proc_field(prog.pid, "State").startswith("S"))
        cmdline = Path(f"/proc/{prog.pid}/cmdline").read_bytes()
        dump = tmp_path / "dump.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump)
        prog.wait_gone()
        assert restore(dump) == prog.pid
        time.sleep(0.5)  # a restored task that crashes or returns early is gone by now
        assert proc_field(prog.pid, "State").startswith("S"), proc_field(prog.pid, "State")
        assert "nanosleep" in Path(f"/proc/{prog.pid}/wchan").read_text()
        syscall = Path(f"/proc/{prog.pid}/syscall").read_text().split()[0]
        assert syscall in ("35", "230"), f"in syscall {syscall}, not (clock_)nanosleep"
        assert Path(f"/proc/{prog.pid}/cmdline").read_bytes() == cmdline
        assert read_stat(prog.pid).comm == "sleep"  # type: ignore[union-attr]


def test_one_gib(tmp_path: Path) -> None:
    """A C program holding 1 GiB of pseudo-random data finds every byte again.

    The restore follows the dump at once: `vzcpt dump` does not wait for the
    killed original to finish tearing down its gigabyte, so the restore finds
    it still dying on its pid and waits for it.
    """
    with Program.start("mem_big", "1024", tmp_path=tmp_path) as prog:
        prog.wait_ready(timeout=40)
        dump = tmp_path / "dump.img"
        reaper = prog.reap_when_dead()
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump)
        assert dump.stat().st_size >= 1 << 30
        assert restore(dump) == prog.pid
        reaper.join(timeout=10)
        assert not reaper.is_alive(), "the original was never reaped"
        assert prog.verify(timeout=30) == "OK"


def test_three_cycles(tmp_path: Path) -> None:
    """Dump and restore the same process tree three times in a row."""
    with Program.start("tree", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        ids = tree_ids(prog)
        assert len(ids) == 8, ids  # root, A, A1, B, B1, C, C1 and the zombie
        for cycle in range(3):
            dump = tmp_path / f"dump{cycle}.img"
            vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump)
            prog.wait_gone()
            assert restore(dump) == prog.pid
            assert tree_ids(prog) == ids, f"cycle {cycle}: (pid, ppid, pgid, sid, state) differ"
        assert prog.verify() == "OK"


def tree_ids(prog: Program) -> dict[int, tuple[int, int, int, str]]:
    """pid -> (ppid, pgid, sid, state) of the tree; the root's ppid is left
    out (after a restore its parent is whoever adopted it)."""
    procs = all_processes()
    return {
        p: (0 if p == prog.pid else procs[p].ppid, procs[p].pgrp, procs[p].session, procs[p].state)
        for p in prog.tree_pids(procs)
    }


def test_leave_running(tmp_path: Path) -> None:
    """--leave-running: the original goes on, untraced; its dump restores
    (once the original is gone) at the step the dump saw."""
    prog, out = start_counter(tmp_path)
    with prog:
        tids = thread_ids(prog.pid)
        dump = tmp_path / "dump.img"
        seen = counter_progress(out)
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump, "--leave-running")
        assert prog.alive()
        assert thread_ids(prog.pid) == tids
        states = thread_states(prog.pid)
        assert not set(states.values()) & {"T", "t"}, states
        assert proc_field(prog.pid, "TracerPid") == "0"
        wait_progress(out, counter_progress(out))
        assert str(prog.pid) in vzcpt("show", dump).stdout

        prog.kill()
        prog.wait_gone()
        end = out.stat().st_size
        assert restore(dump) == prog.pid
        assert thread_ids(prog.pid) == tids
        wait_for("the restored workers to write", lambda: len(counter_progress(out, end)) == 4)
        for k, i in starts(out, end).items():
            # It goes on from a step after the ones written before the dump
            # began, with a valid chain (checked by counter_progress).
            assert i > seen[k], f"worker {k} restarted at step {i}, before the dump at {seen[k]}"
        wait_progress(out, counter_progress(out, end), start=end)


def starts(out: Path, start: int) -> dict[int, int]:
    """The first step each worker wrote from byte `start` on."""
    first: dict[int, int] = {}
    for line in complete_lines(out, start):
        if line in ("READY", "OK"):
            continue
        k, i, _ = line.split()
        first.setdefault(int(k), int(i))
    return first


def test_leave_stopped_dump(tmp_path: Path) -> None:
    """--leave-stopped: every process of the tree is stopped (T, untraced)
    after the dump; after SIGCONT it runs on intact."""
    with Program.start("tree", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        pids = prog.tree_pids()
        dump = tmp_path / "dump.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump, "--leave-stopped")
        time.sleep(0.2)  # a stop that does not hold would show by now
        states = {p: i.state for p in pids if (i := read_stat(p))}
        assert states.keys() == pids
        assert sorted(states.values()) == ["T"] * 7 + ["Z"], states
        assert all(proc_field(p, "TracerPid") == "0" for p in pids)
        vzcpt("show", dump)
        for p in pids:
            os.kill(p, signal.SIGCONT)
        assert prog.verify() == "OK"


def test_leave_stopped_restore(tmp_path: Path) -> None:
    """restore --leave-stopped: all threads stopped, no progress; SIGCONT
    and the computation goes on from where it was dumped."""
    prog, out = start_counter(tmp_path)
    with prog:
        tids = thread_ids(prog.pid)
        dump = tmp_path / "dump.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump)
        prog.wait_gone()
        before = counter_progress(out)
        assert restore(dump, "--leave-stopped") == prog.pid
        assert thread_ids(prog.pid) == tids
        time.sleep(0.3)
        states = thread_states(prog.pid)
        assert set(states.values()) == {"T"}, states
        assert proc_field(prog.pid, "TracerPid") == "0"
        assert counter_progress(out) == before, "the stopped tree made progress"
        os.kill(prog.pid, signal.SIGCONT)
        wait_progress(out, before)
        states = thread_states(prog.pid)
        assert not set(states.values()) & {"T", "t"}, states


def test_dump_piped_into_restore(tmp_path: Path) -> None:
    """`vzcpt dump --dumpfile - | vzcpt restore --dumpfile -` in a real shell."""
    prog, out = start_counter(tmp_path)
    with prog:
        tids = thread_ids(prog.pid)
        original = read_stat(prog.pid)
        assert original is not None
        dump_cmd = shlex.join([*VZCPT, "dump", "--pid", str(prog.pid), "--dumpfile", "-"])
        restore_cmd = shlex.join([*VZCPT, "restore", "--dumpfile", "-"])
        done = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {dump_cmd} | {restore_cmd}"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(prog.pid)
        restored = read_stat(prog.pid)
        assert restored is not None and restored.starttime != original.starttime, (
            "the pid still belongs to the original: it was not dumped and killed"
        )
        assert thread_ids(prog.pid) == tids
        wait_progress(out, counter_progress(out))  # whole file: no reset, no gap


def test_compress(tmp_path: Path) -> None:
    """--compress makes a much smaller file for compressible memory, and it
    restores with every byte intact."""
    prog, out = start_counter(tmp_path, threads=1, mib=64)
    with prog:
        plain, packed = tmp_path / "plain.img", tmp_path / "packed.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", plain, "--leave-running")
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", packed, "--compress")
        prog.wait_gone()
        assert plain.stat().st_size > 64 << 20
        assert packed.stat().st_size < plain.stat().st_size // 10, (
            f"compressed {packed.stat().st_size} bytes, plain {plain.stat().st_size}"
        )
        shown = json.loads(vzcpt("show", packed, "--json").stdout)
        assert any(r["type"] == "process" and r["pid"] == prog.pid for r in shown["records"])
        assert restore(packed) == prog.pid
        os.kill(prog.pid, signal.SIGUSR1)
        wait_for("the memory check", lambda: "OK" in complete_lines(out))
        wait_progress(out, counter_progress(out))
