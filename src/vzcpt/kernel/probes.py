"""Probes of the kernel features vzcpt relies on, as `vzcpt check` prints them.

Like `criu check`, each probe exercises the feature for real, the way a dump
or a restore will use it, and answers with a `Probe(name, ok, detail)`. A
missing feature is `ok=False` with the reason in `detail`, never an exception.
Probes leave nothing behind: every child is killed and reaped, every fd,
mapping and cgroup they create is removed. All of them together take well
under a second. x86_64 only (syscall numbers, NT_X86_XSTATE).

Tests call `require(name)` and skip with the probe's detail when `ok` is false;
the names are listed in `PROBE_NAMES`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import gzip
import itertools
import mmap
import os
import re
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from vzcpt.kernel.vdso import special_mappings, vdso_fingerprint


@dataclass(frozen=True)
class Probe:
    """One kernel feature: whether it works here, and what was seen."""

    name: str
    ok: bool
    detail: str


# x86_64 syscall numbers.
_NR_PTRACE = 101
_NR_PRCTL = 157
_NR_UNSHARE = 272
_NR_PROCESS_VM_READV = 310
_NR_KCMP = 312
_NR_USERFAULTFD = 323
_NR_PIDFD_OPEN = 434
_NR_CLONE3 = 435
_NR_PIDFD_GETFD = 438

_PTRACE_DETACH = 17
_PTRACE_GETREGSET = 0x4204
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
_PTRACE_EVENT_STOP = 128
_NT_X86_XSTATE = 0x202
_WALL = 0x40000000  # __WALL: wait for threads and non-SIGCHLD children too

_PR_SET_PDEATHSIG = 1
_PR_SET_MM = 35
_PR_SET_MM_MAP_SIZE = 15
_PR_TIMER_CREATE_RESTORE_IDS = 77
_PR_TIMER_CREATE_RESTORE_IDS_GET = 2

_KCMP_FILE = 0
_TCP_REPAIR = 19
_CLONE_NEWNS = 0x00020000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000


def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


_UFFD_API = 0xAA
_UFFDIO_API = _iowr(0xAA, 0x3F, 24)
_UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_PM_SCAN_ARG_SIZE = 96
_PAGEMAP_SCAN = _iowr(ord("f"), 16, _PM_SCAN_ARG_SIZE)
_PAGE_IS_PRESENT = 1 << 3

_PAGE = mmap.PAGESIZE
_PM_PRESENT = 1 << 63
_PM_SOFT_DIRTY = 1 << 55
_PM_PFN_MASK = (1 << 55) - 1
# ptrace puts the user XCR0 (enabled xfeatures) in FXSAVE bytes 464..471 (asm/user.h).
_XSAVE_SW_XCR0 = 464
_XFEATURES_AVX512 = 0xE0  # opmask, ZMM_Hi256, Hi16_ZMM

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _RseqConfig(ctypes.Structure):
    # struct ptrace_rseq_configuration
    _fields_ = [
        ("rseq_abi_pointer", ctypes.c_uint64),
        ("rseq_abi_size", ctypes.c_uint32),
        ("signature", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


def _sys(what: str, nr: int, *args: int) -> int:
    """Raw syscall; failures raise OSError whose message names the call."""
    res = int(_libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)))
    if res == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res


def _ptrace(what: str, request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    return _sys(what, _NR_PTRACE, request, pid, addr, data)


def _describe(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "?")
    where = f" ({e.filename})" if e.filename else ""
    return f"{e.strerror}{where} [{name}]"


_Check = Callable[[], tuple[bool, str]]
_PROBES: dict[str, Callable[[], Probe]] = {}


def _probe(name: str) -> Callable[[_Check], Callable[[], Probe]]:
    """Register a check; an OSError it raises means the feature is missing."""

    def register(check: _Check) -> Callable[[], Probe]:
        @functools.wraps(check)
        def run() -> Probe:
            try:
                ok, detail = check()
            except OSError as e:
                ok, detail = False, _describe(e)
            return Probe(name, ok, detail)

        _PROBES[name] = run
        return run

    return register


# -- helpers: children, pages, /proc bits ---------------------------------------------


def _kill_and_reap(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while True:
        try:
            _, status = os.waitpid(pid, _WALL)
        except ChildProcessError:
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            return


@contextmanager
def _child() -> Iterator[int]:
    """A forked child that only sleeps; killed and reaped on exit, whatever happens."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            # Die with the prober even if it is killed before its cleanup runs.
            _sys("prctl", _NR_PRCTL, _PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            while os.getppid() == parent:
                time.sleep(60)
        finally:
            os._exit(0)
    try:
        yield pid
    finally:
        _kill_and_reap(pid)


def _seize_and_stop(pid: int) -> int:
    """PTRACE_SEIZE + PTRACE_INTERRUPT; returns the wait status of the stop."""
    _ptrace("PTRACE_SEIZE", _PTRACE_SEIZE, pid)
    _ptrace("PTRACE_INTERRUPT", _PTRACE_INTERRUPT, pid)
    return os.waitpid(pid, _WALL)[1]


def _is_event_stop(status: int) -> bool:
    return (
        os.WIFSTOPPED(status)
        and os.WSTOPSIG(status) == signal.SIGTRAP
        and status >> 16 == _PTRACE_EVENT_STOP
    )


@contextmanager
def _stopped_child() -> Iterator[int]:
    """A child seized and in a PTRACE_EVENT_STOP, as the dump sees its tasks."""
    with _child() as pid:
        status = _seize_and_stop(pid)
        if not _is_event_stop(status):
            raise OSError(errno.ESRCH, f"child did not stop (wait status {status:#x})")
        try:
            yield pid
        finally:
            with suppress(OSError):
                _ptrace("PTRACE_DETACH", _PTRACE_DETACH, pid)


@contextmanager
def _anon_page() -> Iterator[tuple[mmap.mmap, int]]:
    """A private anonymous page and its address, unmapped afterwards."""
    page = mmap.mmap(-1, _PAGE)
    try:
        anchor = ctypes.c_char.from_buffer(page)
        addr = ctypes.addressof(anchor)
        del anchor  # a live buffer export would make close() fail
        yield page, addr
    finally:
        page.close()


def _pagemap_entry(addr: int) -> int:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, 8, addr // _PAGE * 8)
    finally:
        os.close(fd)
    return int.from_bytes(raw, "little")


def _kconfig(option: str) -> str | None:
    """The option's value in /proc/config.gz ("n" if not set), None if unknown."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(rf"^{option}=(\S+)$", text, re.M)
    return m.group(1) if m else "n"


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup_mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of cgroup mounts in /proc/self/mountinfo."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fstype, _source, options = tail.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                mounts.append((_unescape(head.split()[4]), fstype, set(options.split(","))))
    return mounts


_cgroup_seq = itertools.count()


@contextmanager
def _scratch_cgroup(mount: str) -> Iterator[str]:
    """An empty child cgroup of a hierarchy's root, removed afterwards."""
    path = os.path.join(mount, f"vzcpt-probe-{os.getpid()}-{next(_cgroup_seq)}")
    os.mkdir(path)
    try:
        yield path
    finally:
        with suppress(OSError):
            os.rmdir(path)


# -- the probes ------------------------------------------------------------------------

_CAPS_NEEDED = {"CAP_SYS_ADMIN": 21, "CAP_CHECKPOINT_RESTORE": 40}
_CAP_SYS_RESOURCE = 24


@_probe("root")
def probe_root() -> tuple[bool, str]:
    """Root with CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE effective."""
    with open("/proc/self/status") as f:
        eff = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    missing = [name for name, bit in _CAPS_NEEDED.items() if not eff >> bit & 1]
    euid = os.geteuid()
    detail = f"euid {euid}, " + (
        f"missing {', '.join(missing)}" if missing else "CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE"
    )
    if not eff >> _CAP_SYS_RESOURCE & 1:
        detail += "; no CAP_SYS_RESOURCE (hard rlimits cannot be raised)"
    return euid == 0 and not missing, detail


@_probe("ptrace_seize")
def probe_ptrace_seize() -> tuple[bool, str]:
    """PTRACE_SEIZE + PTRACE_INTERRUPT stop a task without a signal."""
    with _child() as pid:
        status = _seize_and_stop(pid)
        if not _is_event_stop(status):
            return False, f"PTRACE_INTERRUPT gave wait status {status:#x}, not PTRACE_EVENT_STOP"
        _ptrace("PTRACE_DETACH", _PTRACE_DETACH, pid)
    return True, "seized and interrupted a child: PTRACE_EVENT_STOP"


@_probe("xstate")
def probe_xstate() -> tuple[bool, str]:
    """PTRACE_GETREGSET NT_X86_XSTATE gives the full FPU/AVX state."""
    buf = ctypes.create_string_buffer(64 * 1024)  # far above any xsave size (AMX: 11 KiB)
    iov = _Iovec(ctypes.addressof(buf), len(buf))
    with _stopped_child() as pid:
        _ptrace(
            "PTRACE_GETREGSET(NT_X86_XSTATE)",
            _PTRACE_GETREGSET,
            pid,
            _NT_X86_XSTATE,
            ctypes.addressof(iov),
        )
    (xcr0,) = struct.unpack_from("<Q", buf.raw, _XSAVE_SW_XCR0)
    in_xcr0 = "yes" if xcr0 & _XFEATURES_AVX512 == _XFEATURES_AVX512 else "no"
    in_cpuinfo = "yes" if "avx512f" in _cpu_flags() else "no"
    return True, (
        f"xstate {iov.len} bytes, xfeatures {xcr0:#x}; "
        f"AVX-512: {in_xcr0} in xfeatures, {in_cpuinfo} in /proc/cpuinfo"
    )


@_probe("rseq")
def probe_rseq() -> tuple[bool, str]:
    """PTRACE_GET_RSEQ_CONFIGURATION reports a task's rseq area."""
    conf = _RseqConfig()
    with _stopped_child() as pid:
        _ptrace(
            "PTRACE_GET_RSEQ_CONFIGURATION",
            _PTRACE_GET_RSEQ_CONFIGURATION,
            pid,
            ctypes.sizeof(conf),
            ctypes.addressof(conf),
        )
    if not conf.rseq_abi_pointer:
        return True, "works; the child has no rseq area registered"
    return True, (
        f"rseq area {conf.rseq_abi_pointer:#x}, {conf.rseq_abi_size} bytes, "
        f"signature {conf.signature:#x}"
    )


@_probe("process_vm_readv")
def probe_process_vm_readv() -> tuple[bool, str]:
    """process_vm_readv reads another process's memory."""
    payload = os.urandom(256)
    src = ctypes.create_string_buffer(payload, len(payload))
    with _child() as pid:
        # The child keeps its copy of the payload; ours is wiped, so a match
        # proves the bytes came from the child.
        ctypes.memset(src, 0, len(payload))
        dst = ctypes.create_string_buffer(len(payload))
        local = _Iovec(ctypes.addressof(dst), len(payload))
        remote = _Iovec(ctypes.addressof(src), len(payload))
        n = _sys(
            "process_vm_readv",
            _NR_PROCESS_VM_READV,
            pid,
            ctypes.addressof(local),
            1,
            ctypes.addressof(remote),
            1,
            0,
        )
    if n != len(payload) or dst.raw != payload:
        return False, f"read {n} bytes that differ from the child's memory"
    return True, f"read {n} bytes of a child's memory"


@_probe("pagemap_pfn")
def probe_pagemap_pfn() -> tuple[bool, str]:
    """/proc/PID/pagemap shows present pages with their PFNs."""
    with _anon_page() as (page, addr):
        page[0] = 1
        entry = _pagemap_entry(addr)
    if not entry & _PM_PRESENT:
        return False, f"a touched page is not present in pagemap (entry {entry:#x})"
    if not entry & _PM_PFN_MASK:
        return False, "pagemap hides PFNs (needs CAP_SYS_ADMIN)"
    return True, "present bit and PFN visible"


@_probe("pidfd")
def probe_pidfd() -> tuple[bool, str]:
    """pidfd_open + pidfd_getfd duplicate a file held by another process."""
    r, w = os.pipe()
    fds = [r, w]
    try:
        with _child() as pid:
            pidfd = _sys("pidfd_open", _NR_PIDFD_OPEN, pid, 0)
            fds.append(pidfd)
            fds.append(_sys("pidfd_getfd", _NR_PIDFD_GETFD, pidfd, r, 0))
        if os.fstat(fds[-1]).st_ino != os.fstat(r).st_ino:
            return False, "pidfd_getfd returned another file"
        return True, "pidfd_open and pidfd_getfd duplicated a child's pipe"
    finally:
        for fd in fds:
            os.close(fd)


@_probe("clone3_set_tid")
def probe_clone3_set_tid() -> tuple[bool, str]:
    """clone3 with set_tid picks a child's pid without a race."""
    # Both calls are refused by argument checks that come before any cloning.
    try:
        _sys("clone3", _NR_CLONE3, 0, 0)
    except OSError as e:
        if e.errno != errno.EINVAL:
            return False, f"no clone3: {_describe(e)}"
    # struct clone_args v1 (80 bytes): set_tid_size=1 with set_tid=NULL.
    args = (ctypes.c_uint64 * 10)()
    args[9] = 1
    try:
        ret = _sys("clone3", _NR_CLONE3, ctypes.addressof(args), ctypes.sizeof(args))
    except OSError as e:
        if e.errno == errno.EINVAL:
            return True, "clone3 accepts set_tid (EINVAL for a missing set_tid array)"
        if e.errno == errno.E2BIG:
            return False, "clone3 without set_tid (Linux 5.3/5.4)"
        raise
    # Cannot happen on any kernel; never let a stray clone live on.
    if ret == 0:
        os._exit(0)
    _kill_and_reap(ret)
    return False, "clone3 cloned despite invalid set_tid arguments"


@_probe("kcmp")
def probe_kcmp() -> tuple[bool, str]:
    """kcmp(KCMP_FILE) tells whether two fds share one open file."""
    r, w = os.pipe()
    d = os.dup(r)
    try:
        me = os.getpid()
        same = _sys("kcmp", _NR_KCMP, me, me, _KCMP_FILE, r, d)
        other = _sys("kcmp", _NR_KCMP, me, me, _KCMP_FILE, r, w)
    finally:
        for fd in (r, w, d):
            os.close(fd)
    if same != 0 or other not in (1, 2):
        return False, f"kcmp answered {same} for a dup and {other} for another file"
    return True, "compares open files"


@_probe("ns_last_pid")
def probe_ns_last_pid() -> tuple[bool, str]:
    """/proc/sys/kernel/ns_last_pid is writable (choosing pids before fork)."""
    fd = os.open("/proc/sys/kernel/ns_last_pid", os.O_RDWR | os.O_CLOEXEC)
    try:
        last = os.read(fd, 32).strip()
        # Writing back what was read changes nothing but proves the permission.
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, last)
    finally:
        os.close(fd)
    return True, f"writable (last pid {last.decode()})"


@_probe("prctl_mm_map")
def probe_prctl_mm_map() -> tuple[bool, str]:
    """prctl(PR_SET_MM, PR_SET_MM_MAP) restores a task's mm layout in one call."""
    size = ctypes.c_uint(0)
    _sys(
        "prctl(PR_SET_MM_MAP_SIZE)",
        _NR_PRCTL,
        _PR_SET_MM,
        _PR_SET_MM_MAP_SIZE,
        ctypes.addressof(size),
        0,
        0,
    )
    return size.value > 0, f"struct prctl_mm_map is {size.value} bytes"


@_probe("vdso")
def probe_vdso() -> tuple[bool, str]:
    """The vDSO and its data pages ([vvar], [vvar_vclock] on 6.13+) are found."""
    special = special_mappings()
    if "[vdso]" not in special:
        return False, "no [vdso] in /proc/self/maps"
    layout = ", ".join(
        f"{name} {(end - start) // 1024} KiB"
        for name, (start, end) in special.items()
        if name.startswith(("[vvar", "[vdso"))
    )
    return True, f"{layout}; fingerprint {vdso_fingerprint()[:48]}"


@_probe("soft_dirty")
def probe_soft_dirty() -> tuple[bool, str]:
    """Soft-dirty bits (clear_refs=4, pagemap bit 55) track written pages."""
    with _anon_page() as (page, addr):
        page[0] = 1
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")
        page[0] = 2
        entry = _pagemap_entry(addr)
    if entry & _PM_SOFT_DIRTY:
        return True, "a page written after clear_refs=4 is soft-dirty"
    conf = _kconfig("CONFIG_MEM_SOFT_DIRTY")
    why = "" if conf is None else f"; CONFIG_MEM_SOFT_DIRTY={conf} in /proc/config.gz"
    return False, f"missing: pagemap bit 55 stays clear after clear_refs=4 and a write{why}"


@_probe("uffd_wp")
def probe_uffd_wp() -> tuple[bool, str]:
    """userfaultfd with write-protect faults (dirty tracking, post-copy)."""
    fd = _sys("userfaultfd", _NR_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        arg = bytearray(struct.pack("QQQ", _UFFD_API, _UFFD_FEATURE_PAGEFAULT_FLAG_WP, 0))
        try:
            fcntl.ioctl(fd, _UFFDIO_API, arg)
        except OSError as e:
            return False, f"UFFDIO_API refuses UFFD_FEATURE_PAGEFAULT_FLAG_WP: {_describe(e)}"
    finally:
        os.close(fd)
    _, features, _ioctls = struct.unpack("QQQ", arg)
    extra = [
        name
        for name, bit in (
            ("WP_UNPOPULATED", _UFFD_FEATURE_WP_UNPOPULATED),
            ("WP_ASYNC", _UFFD_FEATURE_WP_ASYNC),
        )
        if features & bit
    ]
    return True, f"write-protect faults; features {features:#x} ({', '.join(extra) or 'no async'})"


@_probe("pagemap_scan")
def probe_pagemap_scan() -> tuple[bool, str]:
    """The PAGEMAP_SCAN ioctl (6.7+) lists page categories by range."""
    regions = (ctypes.c_uint64 * 12)()  # 4 x struct page_region {start, end, categories}
    with _anon_page() as (page, addr):
        page[0] = 1
        arg = bytearray(
            struct.pack(
                "12Q",
                _PM_SCAN_ARG_SIZE,
                0,
                addr,
                addr + _PAGE,
                0,
                ctypes.addressof(regions),
                4,
                0,
                0,
                0,
                0,
                _PAGE_IS_PRESENT,
            )
        )
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            n = fcntl.ioctl(fd, _PAGEMAP_SCAN, arg)
        except OSError as e:
            if e.errno == errno.ENOTTY:
                return False, "no PAGEMAP_SCAN ioctl (Linux 6.7+)"
            raise
        finally:
            os.close(fd)
    if n < 1 or regions[0] != addr or not regions[2] & _PAGE_IS_PRESENT:
        return False, f"PAGEMAP_SCAN gave {n} regions, not the present page"
    return True, "reports a present page"


@_probe("tcp_repair")
def probe_tcp_repair() -> tuple[bool, str]:
    """TCP_REPAIR mode (needs CAP_NET_ADMIN) to save and rebuild TCP sockets."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 1)
        on = s.getsockopt(socket.IPPROTO_TCP, _TCP_REPAIR)
        s.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 0)
    return on == 1, "a TCP socket entered and left repair mode"


@_probe("freezer_v1")
def probe_freezer_v1() -> tuple[bool, str]:
    """The cgroup v1 freezer (freezer.state)."""
    mount = next((m for m, t, opts in _cgroup_mounts() if t == "cgroup" and "freezer" in opts), "")
    if not mount:
        return False, "no cgroup v1 freezer hierarchy mounted"
    with _scratch_cgroup(mount) as cg:
        state = os.path.join(cg, "freezer.state")
        if not os.path.exists(state):
            return False, f"no freezer.state in {mount}"
    return True, f"freezer.state in {mount}"


@_probe("freezer_v2")
def probe_freezer_v2() -> tuple[bool, str]:
    """The cgroup v2 freezer (cgroup.freeze, 5.2+)."""
    mount = next((m for m, t, _ in _cgroup_mounts() if t == "cgroup2"), "")
    if not mount:
        return False, "no cgroup v2 hierarchy mounted"
    with _scratch_cgroup(mount) as cg:
        if not os.path.exists(os.path.join(cg, "cgroup.freeze")):
            return False, f"no cgroup.freeze in {mount}"
    return True, f"cgroup.freeze in {mount}"


@_probe("timer_restore_ids")
def probe_timer_restore_ids() -> tuple[bool, str]:
    """prctl(PR_TIMER_CREATE_RESTORE_IDS) lets timer_create() pick saved timer ids."""
    try:
        state = _sys(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            _NR_PRCTL,
            _PR_TIMER_CREATE_RESTORE_IDS,
            _PR_TIMER_CREATE_RESTORE_IDS_GET,
            0,
            0,
            0,
        )
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False, "the kernel does not know PR_TIMER_CREATE_RESTORE_IDS"
        raise
    return True, f"PR_TIMER_CREATE_RESTORE_IDS answers (currently {'on' if state else 'off'})"


@_probe("namespaces")
def probe_namespaces() -> tuple[bool, str]:
    """unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET) in a child."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _sys("unshare", _NR_UNSHARE, _CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWNET)
        except OSError as e:
            code = e.errno or 1
        finally:
            os._exit(code & 0xFF)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        _kill_and_reap(pid)
        raise
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        reason = os.strerror(code) if code > 0 else f"killed by signal {-code}"
        return False, f"unshare of pid, mount and net namespaces failed: {reason}"
    return True, "a child unshared pid, mount and net namespaces"


PROBE_NAMES: tuple[str, ...] = tuple(_PROBES)


def all_probes() -> list[Probe]:
    """Run every probe, freshly, in a stable order."""
    return [run() for run in _PROBES.values()]


@functools.cache
def require(name: str) -> Probe:
    """The probe `name`, run once per process; tests skip on `not ok` with `detail`."""
    try:
        run = _PROBES[name]
    except KeyError:
        raise KeyError(f"no probe named {name!r}; known: {', '.join(PROBE_NAMES)}") from None
    return run()
