"""The two checkpointers under test, driven through their command lines.

Both are timed the same way: wall time of the dump command and of the restore
command (each returns once the restored tree runs). Frozen time comes from each
tool's own statistics. Size is the sum of the apparent sizes of the files the
dump left (vzcpt: one file; CRIU: its image directory, logs and stats kept
elsewhere with -W), like `du -sb`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# CRIU dumps and restores established connections only when told to.
TCP_OPTIONS = ("--tcp-established",)
# Errors CRIU logs and goes on from (CAP_SYS_RESOURCE is not ours on these hosts).
CRIU_GOES_ON = ("Can't setup RLIMIT_NOFILE",)


class ToolFailed(Exception):
    """A dump or restore that failed; the message is one line."""


@dataclass
class DumpResult:
    wall: float  # seconds
    frozen: float  # seconds
    size: int  # bytes


def _run(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ToolFailed(f"timed out after {timeout:.0f} s") from exc
    return proc, time.perf_counter() - started


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Vzcpt:
    name = "vzcpt"

    def __init__(self, exe: str) -> None:
        self.exe = exe
        # As installed software runs: with its modules' bytecode cached. With
        # PYTHONDONTWRITEBYTECODE set, every module edited since its .pyc was
        # written would be compiled again at each start (tens of ms).
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def version(self) -> str:
        return self.exe

    def dump(self, pid: int, work: Path, timeout: float, tcp: bool) -> DumpResult:
        """Dump (TCP connections need no option: vzcpt always keeps them)."""
        dumpfile = work / "dump.vzcpt"
        proc, wall = _run(
            [self.exe, "dump", "--pid", str(pid), "--dumpfile", str(dumpfile), "--stats"],
            timeout,
            self.env,
        )
        if proc.returncode != 0:
            raise ToolFailed(f"exit {proc.returncode}: {_last_line(proc.stderr)}")
        found = re.search(r"frozen time:\s+([\d.]+) ms", proc.stderr)
        if not found:
            raise ToolFailed("no 'frozen time' in the output of vzcpt dump --stats")
        return DumpResult(wall, float(found.group(1)) / 1000, dumpfile.stat().st_size)

    def restore(self, work: Path, timeout: float, tcp: bool) -> tuple[float, int]:
        """Restore; return the wall time and the root pid vzcpt printed."""
        proc, wall = _run(
            [self.exe, "restore", "--dumpfile", str(work / "dump.vzcpt")], timeout, self.env
        )
        if proc.returncode != 0:
            raise ToolFailed(f"exit {proc.returncode}: {_last_line(proc.stderr)}")
        try:
            return wall, int(proc.stdout.split()[0])
        except (IndexError, ValueError) as exc:
            raise ToolFailed(f"vzcpt restore printed no pid: {proc.stdout!r}") from exc

    def unlock(self, work: Path) -> None:
        """Remove the network lock the dump names, if a failed restore left it."""
        dumpfile = work / "dump.vzcpt"
        if not dumpfile.exists():
            return
        shown = subprocess.run([self.exe, "show", "--json", str(dumpfile)], capture_output=True)
        if shown.returncode != 0:
            return
        for rec in json.loads(shown.stdout)["records"]:
            if rec["type"] == "netlock":
                drop = ["nft", "delete", "table", "inet", rec["table"]]
                subprocess.run(drop, capture_output=True)


class Criu:
    name = "criu"

    def __init__(self, exe: str) -> None:
        self.exe = exe

    def version(self) -> str:
        try:
            out = subprocess.run([self.exe, "--version"], capture_output=True, text=True).stdout
        except OSError as exc:
            return f"{self.exe}: {exc}"
        return f"{self.exe} ({_last_line(out) if 'Version' not in out else out.split()[1]})"

    def _failure(self, proc: subprocess.CompletedProcess[str], log: Path) -> ToolFailed:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = proc.stdout + proc.stderr
        # The first error is the cause (the last is usually just "Dumping FAILED."),
        # but for those CRIU logs and goes on from.
        errors = [
            line
            for line in text.splitlines()
            if "Error" in line and not any(harmless in line for harmless in CRIU_GOES_ON)
        ]
        line = errors[0] if errors else _last_line(text)
        # "(00.012345) Error (criu/cr-dump.c:123): ..." loses its time stamp
        line = re.sub(r"^\([\d.]+\)\s*", "", line)
        return ToolFailed(f"exit {proc.returncode}: {line.strip()}")

    def dump(self, pid: int, work: Path, timeout: float, tcp: bool) -> DumpResult:
        images, logs = work / "images", work / "logs"
        images.mkdir()
        logs.mkdir(exist_ok=True)
        argv = [
            self.exe,
            "dump",
            "-t",
            str(pid),
            "-D",
            str(images),
            "-W",
            str(logs),
            "-o",
            "dump.log",
            "-v2",
            "--display-stats",
            *TCP_OPTIONS * tcp,
        ]
        try:
            proc, wall = _run(argv, timeout)
        except OSError as exc:
            raise ToolFailed(str(exc)) from exc
        if proc.returncode != 0:
            raise self._failure(proc, logs / "dump.log")
        found = re.search(r"Frozen time:\s+(\d+) us", proc.stdout)
        if not found:
            raise ToolFailed("no 'Frozen time' in the output of criu dump --display-stats")
        return DumpResult(wall, int(found.group(1)) / 1e6, _dir_size(images))

    def unlock(self, work: Path) -> None:
        """Nothing to do: CRIU unlocks the network itself when its dump fails (as it
        does on Linux 6.16 and later) and at the end of its restore."""

    def restore(self, work: Path, timeout: float, tcp: bool) -> tuple[float, int]:
        """Restore detached (-d); return the wall time and the root pid (--pidfile)."""
        logs = work / "logs"
        pidfile = logs / "restore.pid"
        argv = [
            self.exe,
            "restore",
            "-d",
            "-D",
            str(work / "images"),
            "-W",
            str(logs),
            "-o",
            "restore.log",
            "-v2",
            "--pidfile",
            str(pidfile),
            *TCP_OPTIONS * tcp,
        ]
        proc, wall = _run(argv, timeout)
        if proc.returncode != 0:
            raise self._failure(proc, logs / "restore.log")
        try:
            return wall, int(pidfile.read_text().split()[0])
        except (OSError, IndexError, ValueError) as exc:
            raise ToolFailed(f"criu restore wrote no pid file: {exc}") from exc
