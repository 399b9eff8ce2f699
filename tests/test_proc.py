"""Tests of vzcpt.proc: every parser on the live /proc (of this process, of
`sleep`, and of tests/data/proc/holder.c, which holds one of each object) and
on files captured from a real kernel (tests/data/proc/README.md)."""

import contextlib
import fcntl
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vzcpt.errors import AccessDenied, ProcessGone
from vzcpt.proc import auxv, files
from vzcpt.proc.fdinfo import FdInfo, parse_fdinfo, parse_lock
from vzcpt.proc.limits import RLIM_INFINITY, parse_limits
from vzcpt.proc.maps import MapEntry, parse_maps, parse_smaps_flags
from vzcpt.proc.mountinfo import parse_mountinfo
from vzcpt.proc.pagemap import PM_FILE, PM_PFN_MASK, PM_PRESENT, parse_pagemap
from vzcpt.proc.stat import parse_stat
from vzcpt.proc.status import parse_status
from vzcpt.proc.timers import SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD_ID, parse_timers

DATA = Path(__file__).parent / "data" / "proc"
SELF = os.getpid()
PAGE = os.sysconf("SC_PAGE_SIZE")


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def sigbit(sig: int) -> int:
    return 1 << (sig - 1)


def dev_of(st: os.stat_result) -> tuple[int, int]:
    return (os.major(st.st_dev), os.minor(st.st_dev))


def mapping_at(maps: list[MapEntry], addr: int) -> MapEntry:
    return next(m for m in maps if m.start <= addr < m.end)


@dataclass
class Holder:
    pid: int
    dir: Path
    exe: Path
    info: dict[str, int]  # what holder.c printed: fd numbers, map address, child pids


@pytest.fixture(scope="module")
def holder_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = tmp_path_factory.mktemp("holder") / "holder"
    subprocess.run(
        ["gcc", "-Wall", "-O1", "-pthread", "-o", str(exe), str(DATA / "holder.c")], check=True
    )
    return exe


@pytest.fixture(scope="module")
def holder(holder_exe: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holder]:
    workdir = tmp_path_factory.mktemp("held")
    # Its own session and process group: one killpg ends it and its children.
    proc = subprocess.Popen(
        [str(holder_exe), str(workdir)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line, "holder exited before it was ready"
        info = {k: int(v) for k, v in (kv.split("=") for kv in line.split())}
        yield Holder(proc.pid, workdir, holder_exe, info)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def sleeper() -> Iterator[int]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (123, 4567))

    proc = subprocess.Popen(["sleep", "100"], preexec_fn=limit)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid is gone (and is not reused this fast)
    return proc.pid


# --- files -------------------------------------------------------------------


def test_read_process_and_thread() -> None:
    assert files.read(SELF, "stat").startswith(f"{SELF} (".encode())
    assert files.read(SELF, "stat", tid=SELF).startswith(f"{SELF} (".encode())
    assert files.read(SELF, "cmdline").split(b"\0")[0]


def test_read_large_file_in_pieces() -> None:
    # smaps of a Python process is far larger than one seq_file page. Our own
    # mappings change as we run, so compare against a child that holds still.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        data = files.read(child.pid, "smaps")
        assert len(data) > 16384
        assert len(parse_smaps_flags(data)) == len(parse_maps(files.read(child.pid, "maps")))
    finally:
        child.kill()
        child.wait()


def test_read_range_of_mem(sleeper: int) -> None:
    st = parse_stat(files.read(sleeper, "stat"))
    cmdline = files.read_range(sleeper, "mem", st.arg_start, st.arg_end - st.arg_start)
    assert cmdline == files.read(sleeper, "cmdline") == b"sleep\x00100\x00"


def test_readlink(holder: Holder) -> None:
    assert files.readlink(SELF, "cwd") == os.getcwd()
    assert files.readlink(holder.pid, "exe") == str(holder.exe)
    assert files.readlink(holder.pid, "root") == "/"
    assert files.readlink(holder.pid, f"fd/{holder.info['flock']}") == str(holder.dir / "flock")
    assert files.readlink(holder.pid, "ns/pid").startswith("pid:[")


def test_tids_main_thread_first(holder: Holder) -> None:
    assert files.tids(holder.pid) == [holder.pid, holder.info["thread"]]
    assert files.tids(SELF)[0] == SELF


def test_children_of_every_thread(holder: Holder) -> None:
    # One child was forked by the main thread, one by the second thread.
    kids = sorted([holder.info["child"], holder.info["thread_child"]])
    assert files.children(holder.pid) == kids
    assert files.children(kids[0]) == []


def test_tree_parents_first(holder: Holder) -> None:
    kids = sorted([holder.info["child"], holder.info["thread_child"]])
    assert files.tree(holder.pid) == [holder.pid, *kids]
    mine = files.tree(SELF)
    assert mine[0] == SELF
    assert mine.index(holder.pid) < mine.index(kids[0]) < mine.index(kids[1])


def test_fds(holder: Holder) -> None:
    held = [holder.info[k] for k in ("flock", "posix", "ofd", "lease", "event", "epoll")]
    assert set(held) <= set(files.fds(holder.pid))
    # A high number: fds() itself opens a directory at the lowest free one.
    fd = os.dup2(0, 987)
    try:
        assert fd in files.fds(SELF)
    finally:
        os.close(fd)
    assert fd not in files.fds(SELF)
    assert files.fds(SELF) == sorted(files.fds(SELF))


def test_gone_process_raises_process_gone(dead_pid: int) -> None:
    calls = [
        lambda: files.read(dead_pid, "stat"),
        lambda: files.read(dead_pid, "stat", tid=dead_pid),
        lambda: files.read_range(dead_pid, "pagemap", 0, 8),
        lambda: files.readlink(dead_pid, "exe"),
        lambda: files.tids(dead_pid),
        lambda: files.fds(dead_pid),
        lambda: files.children(dead_pid),
        lambda: files.tree(dead_pid),
    ]
    for call in calls:
        with pytest.raises(ProcessGone, match=f"process {dead_pid} is gone"):
            call()


def test_gone_thread_raises_process_gone() -> None:
    t = threading.Thread(target=lambda: None)
    t.start()
    tid = t.native_id
    t.join()
    assert tid is not None
    # join() returns when the kernel clears the tid, a moment before the task
    # is released: wait (bounded) until its /proc entry is gone too.
    for _ in range(1000):
        if not os.path.exists(f"/proc/{SELF}/task/{tid}"):
            break
        time.sleep(0.001)
    with pytest.raises(ProcessGone, match=f"thread {tid} of process {SELF}"):
        files.read(SELF, "stat", tid=tid)


def test_missing_file_of_live_process_is_not_process_gone() -> None:
    # A closed fd must not be reported as a dead process.
    with pytest.raises(FileNotFoundError):
        files.readlink(SELF, "fd/999999")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_access_denied() -> None:
    # A forked child drops to nobody and reports what it got through a pipe.
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(rfd)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            for call in (lambda: files.read(1, "environ"), lambda: files.readlink(1, "cwd")):
                try:
                    call()
                    os.write(wfd, b"allowed\n")
                except AccessDenied as e:
                    os.write(wfd, f"denied: {e}\n".encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        out = r.read().decode()
    os.waitpid(pid, 0)
    assert out.count("denied:") == 2, out
    assert "/proc/1/environ" in out


# --- maps / smaps --------------------------------------------------------------


def test_maps_live_self() -> None:
    data = files.read(SELF, "maps")
    maps = parse_maps(data)
    assert len(maps) == data.count(b"\n")
    for a, b in zip(maps, maps[1:], strict=False):
        assert a.start < a.end <= b.start
    paths = {m.path for m in maps}
    assert {"[stack]", "[vdso]", "[vvar]"} <= paths
    exe = files.readlink(SELF, "exe")
    st = os.stat(exe)
    text = [m for m in maps if m.path == exe]
    assert text and all((m.dev, m.inode) == (dev_of(st), st.st_ino) for m in text)
    assert any(m.executable and not m.writable for m in text)
    anon = [m for m in maps if m.path == ""]
    assert anon and all(m.inode == 0 and m.dev == (0, 0) for m in anon)


def test_maps_deleted_path_with_space(holder: Holder) -> None:
    maps = parse_maps(files.read(holder.pid, "maps"))
    m = mapping_at(maps, holder.info["map"])
    assert m.path == str(holder.dir / "with space")
    assert m.deleted and m.shared and m.readable and m.writable and not m.executable
    assert (m.size, m.offset, m.perms) == (PAGE, 0, "rw-s")
    # map_files/ names the same file, with the kernel's " (deleted)".
    link = files.readlink(holder.pid, f"map_files/{m.start:x}-{m.end:x}")
    assert link == m.path + " (deleted)"


def test_maps_samples() -> None:
    named = parse_maps(sample("named.maps"))
    assert named[0].path == "/tmp/tmp.178YmsO2Ng/x (deleted)" and named[0].deleted
    assert named[1].path == "/tmp/tmp.178YmsO2Ng/new\nline" and not named[1].deleted
    memfd = named[2]
    assert (memfd.path, memfd.deleted, memfd.shared) == ("/memfd:x y", True, True)
    assert (memfd.dev, memfd.inode) == ((0, 1), 24)
    assert named[3].path == "[stack]"

    maps = parse_maps(sample("holder.maps"))
    assert maps[0] == MapEntry(
        start=0x5591EDB6B000,
        end=0x5591EDB6C000,
        perms="r--p",
        offset=0,
        dev=(0xFE, 0),
        inode=2146404,
        path="/tmp/holder",
        deleted=False,
    )
    by_path = {m.path: m for m in maps}
    assert {"[heap]", "[vvar]", "[vvar_vclock]", "[vdso]", "[stack]"} <= by_path.keys()
    vsyscall = by_path["[vsyscall]"]
    assert (vsyscall.start, vsyscall.perms) == (0xFFFFFFFFFF600000, "--xp")
    assert by_path["/tmp/vzcpt-sample/with space"].deleted
    libc = [m for m in maps if m.path == "/usr/lib/x86_64-linux-gnu/libc.so.6"]
    assert [m.offset for m in libc] == [0, 0x26000, 0x17C000, 0x1CF000, 0x1D3000]


def test_smaps_flags(holder: Holder) -> None:
    maps = parse_maps(files.read(holder.pid, "maps"))
    flags = parse_smaps_flags(files.read(holder.pid, "smaps"))
    assert flags.keys() == {m.start for m in maps}
    shared = mapping_at(maps, holder.info["map"])
    assert {"rd", "wr", "sh", "mr", "mw", "me"} <= flags[shared.start]
    stack = next(m for m in maps if m.path == "[stack]")
    assert "gd" in flags[stack.start]

    captured = parse_smaps_flags(sample("holder.smaps"))
    assert captured.keys() == {m.start for m in parse_maps(sample("holder.maps"))}
    assert "sh" in captured[0x7FD9AF3CC000]
    assert {"rd", "ex", "de"} <= captured[0x7FD9AF3D5000]  # [vdso]


# --- stat --------------------------------------------------------------------------


def test_stat_live_self() -> None:
    st = parse_stat(files.read(SELF, "stat"))
    assert (st.pid, st.ppid, st.pgrp, st.session) == (
        SELF,
        os.getppid(),
        os.getpgrp(),
        os.getsid(0),
    )
    assert st.state == "R"
    assert st.num_threads == len(files.tids(SELF))
    assert st.exit_code == 0 and st.exit_signal == signal.SIGCHLD


def test_stat_holder_memory_layout(holder: Holder) -> None:
    st = parse_stat(files.read(holder.pid, "stat"))
    assert (st.comm, st.state, st.ppid, st.num_threads) == ("a) (b c", "S", SELF, 2)
    maps = parse_maps(files.read(holder.pid, "maps"))
    # Fields 26-28 and 45-51 (zero without ptrace access) against maps and mem.
    code = mapping_at(maps, st.startcode)
    assert code.path == str(holder.exe) and code.executable
    assert st.startcode < st.endcode <= st.start_data <= st.end_data <= st.start_brk
    assert mapping_at(maps, st.startstack).path == "[stack]"
    heap = [m for m in maps if m.path == "[heap]"]
    if heap:
        assert heap[0].start == st.start_brk
    argv = files.read_range(holder.pid, "mem", st.arg_start, st.arg_end - st.arg_start)
    assert argv == files.read(holder.pid, "cmdline")
    env = files.read_range(holder.pid, "mem", st.env_start, st.env_end - st.env_start)
    assert env == files.read(holder.pid, "environ")
    assert mapping_at(maps, st.env_end - 1).path == "[stack]"


def test_stat_thread(holder: Holder) -> None:
    st = parse_stat(files.read(holder.pid, "stat", tid=holder.info["thread"]))
    assert st.pid == holder.info["thread"] and st.comm == "a) (b c"


def test_stat_samples() -> None:
    st = parse_stat(sample("comm-escape.stat"))
    assert (st.pid, st.comm, st.state, st.ppid) == (6323, "x\\y\nz) (w", "S", 6282)
    assert (st.start_data, st.end_data, st.start_brk) == (
        93856219893168,
        93856219893784,
        93856900411392,
    )
    assert (st.arg_start, st.arg_end, st.env_start, st.env_end) == (
        140722457401284,
        140722457401402,
        140722457401402,
        140722457403343,
    )
    assert (st.startcode, st.endcode, st.startstack) == (
        93856219881472,
        93856219881813,
        140722457397840,
    )
    assert (st.rsslim, st.exit_signal, st.exit_code, st.starttime) == (2**64 - 1, 17, 0, 42572)

    held = parse_stat(sample("holder.stat"))
    assert (held.comm, held.num_threads) == ("a) (b c", 2)


def test_stat_old_kernel_and_garbage() -> None:
    # Before 3.3 the line stopped after field 44: the newer fields read as 0.
    fields = sample("comm-escape.stat").split(b" ")
    old = parse_stat(b" ".join(fields[:45]))
    assert old.comm == "x\\y\nz) (w" and old.start_data == 0 and old.exit_code == 0
    with pytest.raises(ValueError):
        parse_stat(b"garbage")


# --- status ------------------------------------------------------------------------


def test_status_live_self() -> None:
    status = parse_status(files.read(SELF, "status"))
    mask = os.umask(0o022)
    os.umask(mask)
    assert (status.tgid, status.pid, status.ppid, status.tracer_pid) == (
        SELF,
        SELF,
        os.getppid(),
        0,
    )
    assert status.umask == mask
    assert status.uid[:3] == os.getresuid() and status.gid[:3] == os.getresgid()
    assert set(status.groups) == set(os.getgroups())
    assert status.ns_pid[0] == SELF and status.ns_tgid[0] == SELF
    assert status.ns_pgid[0] == os.getpgrp() and status.ns_sid[0] == os.getsid(0)
    assert status.threads == len(files.tids(SELF))
    assert status.state == "R"
    if os.geteuid() == 0:
        assert status.cap_eff != 0 and status.cap_bnd != 0


def test_status_holder(holder: Holder) -> None:
    status = parse_status(files.read(holder.pid, "status"))
    assert (status.name, status.umask, status.groups, status.threads) == (
        "a) (b c",
        0o027,
        (1234, 5678),
        2,
    )
    assert status.sig_blocked & sigbit(signal.SIGUSR1)
    assert status.sig_ignored & sigbit(signal.SIGPIPE)
    assert status.sig_caught & sigbit(signal.SIGUSR2)
    assert status.sig_pending == status.shd_pending == 0


def test_status_samples() -> None:
    status = parse_status(sample("comm-escape.status"))
    assert status.name == "x\\y\nz) (w"
    assert (status.pid, status.ppid, status.umask, status.state) == (6323, 6282, 0o022, "S")
    held = parse_status(sample("holder.status"))
    assert (held.name, held.groups, held.uid, held.threads) == (
        "a) (b c",
        (1234, 5678),
        (0, 0, 0, 0),
        2,
    )
    assert held.cap_bnd == 0x000001FFFEFFFFFF and held.cap_amb == 0
    assert held.sig_blocked == sigbit(signal.SIGUSR1)


def test_status_old_kernel_and_garbage() -> None:
    newer = (b"Umask", b"NStgid", b"NSpid", b"NSpgid", b"NSsid", b"CapAmb", b"NoNewPrivs")
    lines = sample("holder.status").split(b"\n")
    old = parse_status(b"\n".join(ln for ln in lines if not ln.startswith(newer)))
    assert old.umask is None and old.ns_pid == () and old.cap_amb == 0
    assert old.name == "a) (b c"
    with pytest.raises(ValueError, match="Name"):
        parse_status(b"\n".join(ln for ln in lines if not ln.startswith(b"Name")))


# --- fdinfo ------------------------------------------------------------------------


def test_fdinfo_live_self_with_locks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"0123456789")
        os.lseek(fd, 3, os.SEEK_SET)
        info = parse_fdinfo(files.read(SELF, f"fdinfo/{fd}"))
        st = os.fstat(fd)
        assert (info.pos, info.ino, info.locks, info.lines) == (3, st.st_ino, (), ())
        assert info.flags & os.O_ACCMODE == os.O_RDWR
        assert info.flags & os.O_APPEND and info.flags & os.O_CLOEXEC
        mounts = parse_mountinfo(files.read(SELF, "mountinfo"))
        assert info.mnt_id in {m.mnt_id for m in mounts}

        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.lockf(fd, fcntl.LOCK_SH, 4, 2)  # bytes 2..5, read lock
        locks = {lk.kind: lk for lk in parse_fdinfo(files.read(SELF, f"fdinfo/{fd}")).locks}
        assert locks.keys() == {"FLOCK", "POSIX"}
        for lk in locks.values():
            assert (lk.pid, lk.dev, lk.ino, lk.mandatory) == (SELF, dev_of(st), st.st_ino, False)
        assert (locks["FLOCK"].write, locks["FLOCK"].start, locks["FLOCK"].end) == (True, 0, None)
        assert (locks["POSIX"].write, locks["POSIX"].start, locks["POSIX"].end) == (False, 2, 5)
    finally:
        os.close(fd)


def test_fdinfo_holder_locks(holder: Holder) -> None:
    def info(name: str) -> FdInfo:
        return parse_fdinfo(files.read(holder.pid, f"fdinfo/{holder.info[name]}"))

    def stat(name: str) -> os.stat_result:
        return os.stat(holder.dir / name)

    (flock,) = info("flock").locks
    assert (flock.kind, flock.write, flock.pid, flock.end) == ("FLOCK", True, holder.pid, None)
    assert (flock.dev, flock.ino) == (dev_of(stat("flock")), stat("flock").st_ino)
    posix = info("posix")
    assert posix.flags & os.O_APPEND
    assert [(lk.kind, lk.write, lk.start, lk.end) for lk in posix.locks] == [("POSIX", True, 5, 14)]
    (ofd,) = info("ofd").locks
    assert (ofd.kind, ofd.write, ofd.pid, ofd.start, ofd.end) == ("OFDLCK", False, -1, 100, None)
    (lease,) = info("lease").locks
    assert (lease.kind, lease.status, lease.write) == ("LEASE", "ACTIVE", False)
    assert lease.ino == stat("lease").st_ino


def test_fdinfo_holder_anon_files(holder: Holder) -> None:
    def info(name: str) -> FdInfo:
        return parse_fdinfo(files.read(holder.pid, f"fdinfo/{holder.info[name]}"))

    event = info("event")
    assert event.extra["eventfd-count"] == "5" and event.locks == ()
    epoll = info("epoll")
    # One "tfd:" line per target: the eventfd and a pipe; "extra" keeps only the last.
    targets = {int(ln.split()[1]) for ln in epoll.lines if ln.startswith("tfd:")}
    assert len(targets) == 2 and holder.info["event"] in targets
    assert int(info("signal").extra["sigmask"], 16) == sigbit(signal.SIGUSR1)
    timer = info("timer")
    assert (timer.extra["clockid"], timer.extra["it_interval"]) == ("1", "(1, 0)")
    assert info("inotify").extra["inotify wd"].startswith("1 ")


def test_fdinfo_samples() -> None:
    flock = parse_fdinfo(sample("fdinfo.flock"))
    assert (flock.pos, flock.flags, flock.mnt_id, flock.ino) == (0, 0o100002, 27, 2146736)
    (lk,) = flock.locks
    assert lk == parse_lock("1: FLOCK  ADVISORY  WRITE 6056 fe:00:2146736 0 EOF")
    assert (lk.kind, lk.pid, lk.dev, lk.ino, lk.start, lk.end) == (
        "FLOCK",
        6056,
        (0xFE, 0),
        2146736,
        0,
        None,
    )
    assert flock.lines == ("lock:\t1: FLOCK  ADVISORY  WRITE 6056 fe:00:2146736 0 EOF",)
    assert "lock" not in flock.extra
    (posix,) = parse_fdinfo(sample("fdinfo.posix")).locks
    assert (posix.start, posix.end, posix.write) == (5, 14, True)
    (ofd,) = parse_fdinfo(sample("fdinfo.ofd")).locks
    assert (ofd.kind, ofd.pid, ofd.write) == ("OFDLCK", -1, False)
    (lease,) = parse_fdinfo(sample("fdinfo.lease")).locks
    assert (lease.kind, lease.status) == ("LEASE", "ACTIVE")

    epoll = parse_fdinfo(sample("fdinfo.epoll"))
    assert len(epoll.lines) == 2 and all(ln.startswith("tfd:") for ln in epoll.lines)
    event = parse_fdinfo(sample("fdinfo.event"))
    assert event.extra == {"eventfd-count": "5", "eventfd-id": "1", "eventfd-semaphore": "0"}
    assert parse_fdinfo(sample("fdinfo.signal")).extra == {"sigmask": "0000000000000200"}
    timer = parse_fdinfo(sample("fdinfo.timer"))
    assert timer.extra["settime flags"] == "00" and timer.extra["clockid"] == "1"
    inotify = parse_fdinfo(sample("fdinfo.inotify"))
    assert inotify.extra["inotify wd"].startswith("1 ino:")


def test_lock_lines_of_other_kernels() -> None:
    # Mandatory locks existed before 5.15; a lock on a file without inode.
    old = parse_lock("1: POSIX  MANDATORY WRITE 1234 08:01:1234 0 EOF")
    assert old.mandatory and old.dev == (8, 1)
    none = parse_lock("2: POSIX  ADVISORY  READ 99 <none>:0 0 EOF")
    assert (none.dev, none.ino, none.pid) == ((0, 0), 0, 99)
    with pytest.raises(ValueError):
        parse_lock("1: FLOCK")


# --- limits ------------------------------------------------------------------------


def expected_limit(value: int) -> int:
    return RLIM_INFINITY if value == resource.RLIM_INFINITY else value


def test_limits_live(sleeper: int) -> None:
    mine = parse_limits(files.read(SELF, "limits"))
    assert mine.keys() == set(range(16))
    for res, (soft, hard) in mine.items():
        want = resource.getrlimit(res)
        assert (soft, hard) == (expected_limit(want[0]), expected_limit(want[1]))
    theirs = parse_limits(files.read(sleeper, "limits"))
    assert theirs[resource.RLIMIT_NOFILE] == (123, 4567)
    for res, (soft, hard) in theirs.items():
        want = resource.prlimit(sleeper, res)
        assert (soft, hard) == (expected_limit(want[0]), expected_limit(want[1]))


def test_limits_sample() -> None:
    limits = parse_limits(sample("limits"))
    assert len(limits) == 16
    assert limits[resource.RLIMIT_CPU] == (10, RLIM_INFINITY)
    assert limits[resource.RLIMIT_FSIZE] == (RLIM_INFINITY, RLIM_INFINITY)
    assert limits[resource.RLIMIT_STACK] == (8388608, RLIM_INFINITY)
    assert limits[resource.RLIMIT_NOFILE] == (123, 4567)
    assert limits[10] == (RLIM_INFINITY, RLIM_INFINITY)  # RLIMIT_LOCKS, not in resource
    assert limits[resource.RLIMIT_NICE] == (0, 0)
    assert limits[resource.RLIMIT_RTTIME] == (RLIM_INFINITY, RLIM_INFINITY)


# --- timers ------------------------------------------------------------------------


def test_timers_live(holder: Holder, sleeper: int) -> None:
    timers = sorted(parse_timers(files.read(holder.pid, "timers")), key=lambda t: t.id)
    pid = holder.pid
    assert [
        (t.id, t.signal, t.sigev_value, t.notify, t.notify_tid, t.clock_id) for t in timers
    ] == [
        (0, signal.SIGUSR2, 0x1234, "signal", pid, 1),
        (1, signal.SIGRTMIN + 1, 77, "signal", pid, 0),
        (2, 0, 0, "none", pid, 7),
    ]
    assert [t.sigev_notify for t in timers] == [SIGEV_SIGNAL, SIGEV_THREAD_ID, SIGEV_NONE]
    assert parse_timers(files.read(sleeper, "timers")) == []


def test_timers_sample() -> None:
    timers = parse_timers(sample("holder.timers"))
    assert [t.id for t in timers] == [2, 1, 0]
    assert timers[1].notify_thread and timers[1].sigev_value == 0x4D
    assert timers[2].sigev_value == 0x1234 and timers[2].clock_id == 1


# --- auxv ----------------------------------------------------------------------------


def test_auxv_live(holder: Holder) -> None:
    mine = dict(auxv.parse_auxv(files.read(SELF, "auxv")))
    assert auxv.AT_NULL not in mine
    assert mine[auxv.AT_PAGESZ] == PAGE
    assert (mine[auxv.AT_UID], mine[auxv.AT_GID]) == (os.getuid(), os.getgid())
    maps = parse_maps(files.read(SELF, "maps"))
    assert mapping_at(maps, mine[auxv.AT_SYSINFO_EHDR]).path == "[vdso]"

    theirs = dict(auxv.parse_auxv(files.read(holder.pid, "auxv")))
    maps = parse_maps(files.read(holder.pid, "maps"))
    assert mapping_at(maps, theirs[auxv.AT_ENTRY]).path == str(holder.exe)
    assert mapping_at(maps, theirs[auxv.AT_PHDR]).path == str(holder.exe)
    execfn = files.read_range(holder.pid, "mem", theirs[auxv.AT_EXECFN], 4096)
    assert execfn.split(b"\0")[0] == bytes(holder.exe)


def test_auxv_sample() -> None:
    data = sample("holder.auxv")
    pairs = auxv.parse_auxv(data)
    assert len(pairs) == len(data) // 16 - 1  # everything but AT_NULL
    assert dict(pairs)[auxv.AT_PAGESZ] == 4096
    # Entries after AT_NULL are ignored, and so is a torn last pair.
    assert auxv.parse_auxv(data + b"\x07" * 16 + b"\x01") == pairs


# --- mountinfo --------------------------------------------------------------------


def test_mountinfo_live_self() -> None:
    mounts = parse_mountinfo(files.read(SELF, "mountinfo"))
    ids = [m.mnt_id for m in mounts]
    assert len(ids) == len(set(ids))
    root = next(m for m in mounts if m.mountpoint == "/")
    assert root.dev == dev_of(os.stat("/"))
    assert any(m.fstype == "proc" and m.mountpoint == "/proc" for m in mounts)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_mountinfo_escapes_live(tmp_path: Path) -> None:
    spaced, tabbed = tmp_path / "a b", tmp_path / "tab\tx"
    spaced.mkdir()
    tabbed.mkdir()
    # A private mount namespace that dies with the shell: nothing to unmount.
    script = (
        'mount -t tmpfs -o size=1m "src with space" "$1" && mount -t tmpfs "" "$2" && '
        'mount --make-shared "$1" && cat /proc/self/mountinfo'
    )
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
        + [str(spaced), str(tabbed)],
        capture_output=True,
        check=True,
    ).stdout
    by_point = {m.mountpoint: m for m in parse_mountinfo(out)}
    first, second = by_point[str(spaced)], by_point[str(tabbed)]
    assert (first.fstype, first.source, first.root) == ("tmpfs", "src with space", "/")
    assert "size=1024k" in first.super_options.split(",")
    assert first.shared is not None and first.master is None
    assert (second.source, second.optional, second.shared) == ("", (), None)


def test_mountinfo_sample() -> None:
    mounts = parse_mountinfo(sample("mountinfo"))
    assert mounts[0].mountpoint == "/" and mounts[0].dev == (254, 0)
    assert mounts[0].source == "/dev/vda" and mounts[0].fstype == "ext4"
    spaced = mounts[-2]
    assert (spaced.mnt_id, spaced.parent_id, spaced.dev) == (63, 43, (0, 39))
    assert spaced.mountpoint == "/tmp/tmp.QuVRqww2ka/a b"
    assert (spaced.source, spaced.options) == ("src with space", "rw,relatime")
    assert (spaced.optional, spaced.shared) == (("shared:1",), 1)
    assert spaced.super_options == "rw,size=1024k,mode=700"
    assert mounts[-1].mountpoint == "/tmp/tmp.QuVRqww2ka/tab\tx" and mounts[-1].source == ""
    with pytest.raises(ValueError):
        parse_mountinfo(b"1 2 0:3 / /x rw shared:1 tmpfs none rw\n")


# --- pagemap -----------------------------------------------------------------------


def pagemap_entry(pid: int, addr: int) -> int:
    entries = parse_pagemap(files.read_range(pid, "pagemap", addr // PAGE * 8, 8))
    assert len(entries) == 1
    return entries[0]


def test_pagemap_live(holder: Holder) -> None:
    st = parse_stat(files.read(holder.pid, "stat"))
    stack = pagemap_entry(holder.pid, st.startstack)
    assert stack & PM_PRESENT and not stack & PM_FILE
    if os.geteuid() == 0:
        assert stack & PM_PFN_MASK  # PFNs are hidden from the unprivileged
    shared = pagemap_entry(holder.pid, holder.info["map"])  # written by holder.c
    assert shared & PM_PRESENT and shared & PM_FILE
    maps = parse_maps(files.read(holder.pid, "maps"))
    guard = next(m for m in maps if m.perms == "---p" and m.path == "")  # thread stack guard
    assert not pagemap_entry(holder.pid, guard.start) & PM_PRESENT


def test_parse_pagemap() -> None:
    entries = parse_pagemap((PM_PRESENT | 5).to_bytes(8, "little") + bytes(8) + b"\xff")
    assert entries.typecode == "Q" and list(entries) == [PM_PRESENT | 5, 0]
