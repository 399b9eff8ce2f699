"""What a user of the `vzcpt` command sees: errors, files, output, statistics.

Every expected failure is one line on stderr starting "vzcpt: error:", a
non-zero exit and no traceback; a refused dump leaves the tree running; a
refused restore creates no process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cpt import VZCPT, vzcpt
from harness import Program, all_processes, read_stat
from test_real_programs import Session, complete_lines, proc_field, thread_ids, wait_for

SOCKET_HOLDER = Path(__file__).resolve().parent / "programs" / "real" / "socket_holder.py"
BIN = Path(sys.executable).parent  # the console scripts sit beside the interpreter


def one_line_error(result: subprocess.CompletedProcess[str], *must_name: str) -> str:
    """The single error line of a failed command, checked; returned for more checks."""
    assert result.returncode != 0, f"succeeded: {result.stdout!r}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("vzcpt: error:"), line
    for word in must_name:
        assert word in line, f"{word!r} not named in: {line}"
    return line


def free_pid() -> int:
    """A pid no process uses (the top of the pid range is reached last)."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


def start_holder(tmp_path: Path) -> Program:
    prog = Program.start("holder", "8", tmp_path=tmp_path)
    try:
        prog.wait_ready()
    except BaseException:
        prog.kill()
        raise
    return prog


def pages_stat(stderr: str) -> int:
    found = re.search(r"^\s*pages:\s+(\d+)\s*$", stderr, re.MULTILINE)
    assert found, f"no pages count in:\n{stderr}"
    return int(found.group(1))


# --- errors on dump ------------------------------------------------------


def test_dump_missing_pid(tmp_path: Path) -> None:
    pid = free_pid()
    dump = tmp_path / "dump.img"
    one_line_error(vzcpt("dump", "--pid", str(pid), "--dumpfile", dump, check=False), str(pid))
    assert not dump.exists()


@pytest.mark.parametrize(
    "kind,where", [("netlink", "root"), ("packet", "root"), ("netlink", "child")]
)
def test_dump_refuses_socket(kind: str, where: str, tmp_path: Path) -> None:
    """A socket of a kind vzcpt cannot save is refused, naming the process, the
    descriptor and the socket's family;
    the program keeps running, untraced and not stopped."""
    out = tmp_path / "out"
    argv = [sys.executable, str(SOCKET_HOLDER), str(out), kind]
    if where == "child":
        argv.append("child")
    with Session(argv, tmp_path, "socket") as prog:

        def counted() -> int:
            return sum(1 for ln in complete_lines(out) if ln.isdigit())

        wait_for("the holder to count", lambda: counted() >= 5)
        sockets = [ln.split()[1:] for ln in complete_lines(out) if ln.startswith("SOCKET ")]
        holder = int(sockets[0][0])
        assert (holder == prog.pid) == (where == "root")
        members = prog.members()
        dump = tmp_path / "dump.img"
        result = vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump, check=False)
        line = one_line_error(result, str(holder))
        assert f"a {kind} socket" in line, line
        fds = {fd for _, fd in sockets}
        assert any(re.search(rf"\b{fd}\b", line.replace(str(holder), "")) for fd in fds), (
            f"none of the socket descriptors {sorted(fds)} is named in: {line}"
        )
        assert not dump.exists(), "a refused dump left its file behind"

        assert prog.members() == members
        for pid in members:
            assert proc_field(pid, "State")[:1] not in ("T", "t"), proc_field(pid, "State")
            assert proc_field(pid, "TracerPid") == "0", f"pid {pid} is still traced"
        now = counted()
        wait_for("the holder to go on counting", lambda: counted() >= now + 10)


# --- damaged dump files --------------------------------------------------


def _flip(at: Callable[[int], int]) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        i = at(len(data))
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]

    return damage


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda d: b"",
    "cut-after-100-bytes": lambda d: d[:100],
    "cut-in-half": lambda d: d[: len(d) // 2],
    "last-byte-missing": lambda d: d[:-1],
    "flipped-byte-20": _flip(lambda n: 20),
    "flipped-byte-in-middle": _flip(lambda n: n // 2),
    "flipped-byte-near-end": _flip(lambda n: n - 3),
}


@pytest.fixture(scope="module")
def holder_dump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Program, Path]]:
    """A dump of the holder program, whose original is gone."""
    tmp = tmp_path_factory.mktemp("holder")
    with start_holder(tmp) as prog:
        dump = tmp / "dump.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump)
        prog.wait_gone()
        yield prog, dump


def strays(before: set[int], pid: int, dump: Path) -> list[str]:
    """New processes that a restore of `dump` (of pid) may have left: the
    pid itself, its session, and anything naming the test's directory (the
    holder's report, the restorer's dump file).  Other processes are not
    ours to judge: other test runs share the machine."""
    found = []
    for p, info in all_processes().items():
        if p in before and p != pid:
            continue
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            cmdline = ""
        if p == pid or info.session == pid or str(dump.parent) in cmdline:
            found.append(f"{p} ({info.comm}, state {info.state})")
    return found


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_restore_damaged_dump(damage: str, holder_dump: tuple[Program, Path]) -> None:
    """A truncated or corrupted dump is refused in one line, creating nothing."""
    prog, good = holder_dump
    bad = good.with_name(f"{damage}.img")
    bad.write_bytes(DAMAGES[damage](good.read_bytes()))
    assert not Path(f"/proc/{prog.pid}").exists()
    before = set(all_processes())
    result = vzcpt("restore", "--dumpfile", bad, check=False)
    try:
        one_line_error(result, str(bad))
        assert not strays(before, prog.pid, bad), "the refused restore left processes"
    finally:
        prog.kill()  # whatever a wrongly accepted restore started
        bad.unlink()


def test_restore_intact_dump_after_damaged_ones(holder_dump: tuple[Program, Path]) -> None:
    """The intact dump still restores (refusing the damaged copies changed nothing)."""
    prog, good = holder_dump
    assert int(vzcpt("restore", "--dumpfile", good).stdout) == prog.pid
    assert prog.verify() == "OK"


# --- busy pids -----------------------------------------------------------


def test_restore_pid_busy(tmp_path: Path) -> None:
    """A second restore of the same dump names the busy pid and leaves the
    running tree alone."""
    with start_holder(tmp_path) as prog:
        dump = tmp_path / "dump.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump)
        prog.wait_gone()
        assert int(vzcpt("restore", "--dumpfile", dump).stdout) == prog.pid
        first = read_stat(prog.pid)
        assert first is not None
        tids = thread_ids(prog.pid)
        before = set(all_processes())

        one_line_error(vzcpt("restore", "--dumpfile", dump, check=False), str(prog.pid))

        assert read_stat(prog.pid) == first  # same process, same state, same group
        assert thread_ids(prog.pid) == tids
        assert proc_field(prog.pid, "TracerPid") == "0"
        assert [s for s in strays(before, prog.pid, dump) if int(s.split()[0]) != prog.pid] == []
        assert prog.verify() == "OK"


# --- the dump file and `vzcpt show` --------------------------------------


def test_dump_file_is_private(tmp_path: Path) -> None:
    """0600 even under umask 0, and also when the file existed with 0644."""
    with start_holder(tmp_path) as prog:
        fresh, existing = tmp_path / "fresh.img", tmp_path / "existing.img"
        existing.write_bytes(b"old")
        existing.chmod(0o644)
        for dump in (fresh, existing):
            args = ["dump", "--pid", str(prog.pid), "--dumpfile", str(dump), "--leave-running"]
            done = subprocess.run(
                [*VZCPT, *args],
                capture_output=True,
                text=True,
                timeout=60,
                umask=0,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode == 0, done.stderr
            assert dump.stat().st_mode & 0o777 == 0o600, f"{dump.name}: {dump.stat().st_mode:o}"
        assert prog.alive()


def test_show(tmp_path: Path) -> None:
    with start_holder(tmp_path) as prog:
        dump = tmp_path / "dump.img"
        vzcpt("dump", "--pid", str(prog.pid), "--dumpfile", dump, "--leave-running")
        tids = thread_ids(prog.pid)
    text = vzcpt("show", dump).stdout
    assert str(prog.pid) in text and "holder" in text, text
    shown = json.loads(vzcpt("show", dump, "--json").stdout)
    procs = [r for r in shown["records"] if r.get("type") == "process"]
    assert [r["pid"] for r in procs] == [prog.pid]
    assert {t["tid"] for t in procs[0]["threads"]} == tids


@pytest.mark.parametrize(
    "args,names",
    [
        (("restore", "--dumpfile", "/nonexistent/dump.img"), "/nonexistent/dump.img"),
        (("show", "/nonexistent/dump.img"), "/nonexistent/dump.img"),
        (("show", "/etc/hostname"), "/etc/hostname"),
        (("restore", "--dumpfile", "/etc/hostname"), "/etc/hostname"),
    ],
)
def test_bad_dump_file_argument(args: tuple[str, ...], names: str) -> None:
    one_line_error(vzcpt(*args, check=False), names)


def test_usage_error() -> None:
    result = vzcpt("dump", check=False)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


# --- the other commands --------------------------------------------------


def test_check() -> None:
    done = subprocess.run([str(BIN / "vzcpt"), "check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Looks good." in done.stdout


@pytest.mark.parametrize("command", [["vzmigrate"]])
def test_not_implemented_yet(command: list[str]) -> None:
    script = BIN / command[0]
    assert script.is_file(), f"no console script {script}"
    done = subprocess.run([str(script), *command[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "not implemented yet" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# --- statistics ----------------------------------------------------------


def test_stats(tmp_path: Path) -> None:
    """--stats: times and pages on stderr, so stdout stays the dump (or the pid)."""
    with start_holder(tmp_path) as prog:
        dump = tmp_path / "dump.img"
        with open(dump, "wb") as stdout:
            done = subprocess.run(
                [*VZCPT, "dump", "--pid", str(prog.pid), "--dumpfile", "-", "--stats"],
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        assert done.returncode == 0, done.stderr
        for phase in ("freeze", "frozen", "dump"):
            assert re.search(rf"^\s*{phase} time:\s+[\d.]+ ms", done.stderr, re.M), done.stderr
        dumped = pages_stat(done.stderr)
        assert dumped >= 8 << 8  # 8 MiB of random data: 2048 pages at least
        prog.wait_gone()
        assert str(prog.pid) in vzcpt("show", dump).stdout  # stdout held only the dump

        restored = vzcpt("restore", "--dumpfile", dump, "--stats")
        assert restored.stdout.strip() == str(prog.pid)
        assert "restore statistics" in restored.stderr
        assert re.search(r"^\s*total time:\s+[\d.]+ ms", restored.stderr, re.M), restored.stderr
        assert pages_stat(restored.stderr) == dumped
        assert prog.verify() == "OK"
