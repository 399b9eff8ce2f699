"""Build and drive the checkpoint test programs of tests/programs/.

Each program sets up one kind of state, writes READY to its report file,
waits for SIGUSR1, then checks from inside that the state is intact and
writes OK or FAIL (protocol: tests/programs/cpt_test.h).  A test reads:

    with Program.start("mem_anon", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        dump(prog.pid)            # the engine; it kills the original
        prog.wait_gone()          # reaps it: its pid is free for the restore
        restore()
        assert prog.verify() == "OK"

The program keeps no pipe to the test (stdin is /dev/null, stdout and stderr
go to a log file), and after a restore it is no longer our child: its state
is read from the report file and /proc, never from Popen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

PROGRAMS_DIR = Path(__file__).resolve().parent / "programs"
BIN_DIR = Path(os.environ.get("VZCPT_TEST_BIN", "/tmp/vzcpt-test-bin"))
CFLAGS = ["-O1", "-g", "-pthread", "-Wall", "-Wextra"]
LIBS = ["-lrt"]
POLL_S = 0.01


class ProgramError(Exception):
    """A test program misbehaved: died, failed during setup, or timed out."""


def build(name: str) -> Path:
    """Compile tests/programs/NAME.c into BIN_DIR (cached); return the binary.

    It is rebuilt when the source, cpt_test.h or this file (the flags) is
    newer.  The binary is written under a temporary name and renamed, so
    parallel test runs never execute a half-written file.
    """
    src = PROGRAMS_DIR / f"{name}.c"
    if not src.is_file():
        raise ProgramError(f"no test program {src}")
    out = BIN_DIR / name
    newest = max(p.stat().st_mtime_ns for p in (src, PROGRAMS_DIR / "cpt_test.h", Path(__file__)))
    with contextlib.suppress(FileNotFoundError):
        if out.stat().st_mtime_ns >= newest:
            return out
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = BIN_DIR / f".{name}.{os.getpid()}.tmp"
    cmd = ["gcc", *CFLAGS, "-o", str(tmp), str(src), *LIBS]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ProgramError(f"cannot build {name}: {' '.join(cmd)}\n{done.stderr}")
    os.replace(tmp, out)
    return out


@dataclass(frozen=True)
class ProcInfo:
    """The fields of /proc/PID/stat the harness needs."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    starttime: int


def read_stat(pid: int) -> ProcInfo | None:
    """Parse /proc/PID/stat; None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    head, _, rest = raw.rpartition(b")")
    comm = head.partition(b"(")[2].decode(errors="replace")
    f = rest.split()
    return ProcInfo(pid, comm, f[0].decode(), int(f[1]), int(f[2]), int(f[3]), int(f[19]))


def all_processes() -> dict[int, ProcInfo]:
    procs: dict[int, ProcInfo] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := read_stat(int(entry))) is not None:
            procs[info.pid] = info
    return procs


def _ancestors() -> set[int]:
    """This process and its ancestors: never to be killed."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        info = read_stat(pid)
        pid = info.ppid if info else 0
    return out


def _descendants(roots: set[int], procs: dict[int, ProcInfo]) -> set[int]:
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for info in procs.values():
            if info.ppid in found and info.pid not in found:
                found.add(info.pid)
                grew = True
    return found


class Program:
    """One running test program (and its descendants).

    Use as a context manager: the whole tree is killed on exit, even if the
    test failed and even if the tree was restored under another parent.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], report: Path, log: Path):
        self.name = name
        self.report = report
        self.log_path = log
        self._popen = popen
        self.pid = popen.pid
        # pid -> (starttime, comm) of every process seen in the tree: finds
        # members that left it (reparented after their parent died).
        self._known: dict[int, tuple[int, str]] = {}
        self._comms = {name[:15]}

    @classmethod
    def start(cls, name: str, *args: str | int, tmp_path: Path) -> Self:
        """Build NAME and run it in its own session, cwd tmp_path."""
        return cls.command(name, [str(build(name))], *args, tmp_path=tmp_path)

    @classmethod
    def command(cls, name: str, argv: list[str], *args: str | int, tmp_path: Path) -> Self:
        """Run `argv REPORT ARGS...` (any program that follows the protocol) like start()."""
        tmp_path.mkdir(parents=True, exist_ok=True)
        stem, n = name, 1
        while (tmp_path / f"{stem}.report").exists():
            n += 1
            stem = f"{name}-{n}"
        report, log = tmp_path / f"{stem}.report", tmp_path / f"{stem}.log"
        report.touch()
        with open(log, "ab") as logf, open(os.devnull, "rb") as devnull:
            popen = subprocess.Popen(
                [*argv, str(report), *map(str, args)],
                stdin=devnull,
                stdout=logf,
                stderr=logf,
                cwd=tmp_path,
                start_new_session=True,  # restore wants the root to lead a session
            )
        return cls(name, popen, report, log)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    # --- reading the program's state ---------------------------------------

    def report_lines(self) -> list[str]:
        """The complete lines written to the report so far."""
        try:
            text = self.report.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return text.split("\n")[:-1]  # a line is complete once its \n is there

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def reap_when_dead(self) -> threading.Thread:
        """Reap the original child as soon as it dies, from a thread, the way
        a parent that waits for its children would; return that thread."""
        reaper = threading.Thread(target=self._popen.wait, daemon=True)
        reaper.start()
        return reaper

    def _reap(self) -> None:
        """Reap the original child once it died (a zombie would keep its pid
        busy for the restore).  After a restore the pid is no longer our
        child and poll() just records that."""
        self._popen.poll()

    def alive(self) -> bool:
        """The root pid exists and is not a zombie."""
        self._reap()
        info = read_stat(self.pid)
        return info is not None and info.state not in ("Z", "X")

    def gone(self) -> bool:
        """True when the root pid no longer exists at all."""
        self._reap()
        return not Path(f"/proc/{self.pid}").exists()

    def tree_pids(self, procs: dict[int, ProcInfo] | None = None) -> set[int]:
        """The root and its descendants, plus anyone in its session."""
        procs = all_processes() if procs is None else procs
        if self.pid not in procs:
            return set()
        members = {p for p, i in procs.items() if i.session == self.pid or i.pgrp == self.pid}
        return _descendants({self.pid} | members, procs)

    def _snapshot(self) -> None:
        procs = all_processes()
        for pid in self.tree_pids(procs):
            info = procs[pid]
            self._known[pid] = (info.starttime, info.comm)
            self._comms.add(info.comm)

    def diagnose(self) -> str:
        """What a failing test should print: process state, report, log."""
        # The original's exit code: -9 if the dump killed it; 0 also when
        # the pid was restored (no longer our child).
        rc = self._popen.returncode
        lines = [f"program {self.name} pid {self.pid} (original's exit code {rc})"]
        for pid in sorted(self.tree_pids()) or [self.pid]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                wchan = Path(f"/proc/{pid}/wchan").read_text()
            except OSError:
                lines.append(f"  pid {pid}: gone")
                continue
            keep = ("Name", "State", "PPid", "TracerPid", "Threads", "SigPnd", "ShdPnd", "SigBlk")
            fields = [ln for ln in status.splitlines() if ln.split(":")[0] in keep]
            lines.append(
                f"  pid {pid}: wchan={wchan} " + "; ".join(f.replace("\t", " ") for f in fields)
            )
        lines.append("--- report ---")
        lines.extend(self.report_lines())
        lines.append("--- log ---")
        lines.append(self.log()[-4000:])
        return "\n".join(lines)

    # --- the protocol -------------------------------------------------------

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait for READY.  A SKIP line skips the test; FAIL or death raises."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.report_lines()
            if "READY" in lines:
                self._snapshot()
                return
            for line in lines:
                if line.startswith("FAIL"):
                    raise ProgramError(
                        f"{self.name} failed during setup: {line}\n{self.diagnose()}"
                    )
                if line.startswith("SKIP "):
                    self.kill()
                    pytest.skip(f"{self.name}: {line[5:]}")
            if not self.alive():
                raise ProgramError(f"{self.name} died before READY\n{self.diagnose()}")
            if time.monotonic() > deadline:
                raise ProgramError(f"{self.name} not READY after {timeout} s\n{self.diagnose()}")
            time.sleep(POLL_S)

    def _verdict(self) -> str | None:
        for line in self.report_lines():
            if line == "OK":
                return line
            if line.startswith("FAIL"):
                return f"{line}\n{self.diagnose()}"
        return None

    def verify(self, timeout: float = 10.0) -> str:
        """Send SIGUSR1 to the root; return "OK" or the FAIL line (followed by
        the diagnosis).  Raises ProgramError if it dies or times out without
        a verdict."""
        if not self.alive():
            raise ProgramError(f"{self.name} is not running\n{self.diagnose()}")
        self._snapshot()
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            if (verdict := self._verdict()) is not None:
                return verdict
            if not self.alive():
                if (verdict := self._verdict()) is not None:  # written just before exit
                    return verdict
                raise ProgramError(f"{self.name} died without a verdict\n{self.diagnose()}")
            if time.monotonic() > deadline:
                raise ProgramError(f"{self.name}: no verdict after {timeout} s\n{self.diagnose()}")
            time.sleep(POLL_S)

    # --- cleanup ------------------------------------------------------------

    def _targets(self) -> set[int]:
        """Every live process that belongs to this program's tree."""
        procs = all_processes()
        ours: set[int] = set()
        root = procs.get(self.pid)
        # Still our child, or (after a restore) a process that looks like it.
        if root is not None and (self._popen.poll() is None or root.comm in self._comms):
            ours.add(self.pid)
            ours |= {p for p, i in procs.items() if self.pid in (i.session, i.pgrp)}
        for pid, (_, comm) in self._known.items():
            info = procs.get(pid)
            if info is not None and info.comm == comm:
                ours.add(pid)
        return _descendants(ours, procs) - _ancestors()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole tree, reap what is ours, wait until every member
        is dead (gone or a zombie of another parent), drop SysV segments."""
        targets = self._targets()
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            alive = [p for p in targets if (i := read_stat(p)) is not None and i.state != "Z"]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        self._remove_shm()
        if alive:
            raise ProgramError(f"{self.name}: pids {alive} survived SIGKILL")

    def wait_gone(self, timeout: float = 10.0) -> None:
        """Wait until the root and every process seen in its tree have left
        /proc entirely (reaped), so a restore can take their pids again.
        Orphans are reaped by init, which here can take a few seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            left = [
                p
                for p, (start, _) in self._known.items()
                if (i := read_stat(p)) is not None and i.starttime == start
            ]
            if not left and self.gone():
                return
            if time.monotonic() > deadline:
                raise ProgramError(f"{self.name}: pids {left or [self.pid]} still exist")
            time.sleep(POLL_S)

    def _remove_shm(self) -> None:
        """Remove the SysV segments the program reported, if left unattached."""
        ids = {ln.split()[1] for ln in self.report_lines() if ln.startswith("SHMID ")}
        if not ids:
            return
        try:
            table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
        except OSError:
            return
        for row in table:
            f = row.split()
            if f[1] in ids and f[6] == "0":  # shmid, nattch
                subprocess.run(["ipcrm", "-m", f[1]], capture_output=True, check=False)
