"""A process's identity and attributes: ids, credentials, limits and the small
per-process settings (umask, nice, personality, cwd, root, pdeathsig,
dumpable, child subreaper).

Kernel interfaces: /proc/PID/stat and status (ids, umask, capabilities,
no_new_privs), /proc/PID/limits, /proc/PID/cwd and root; prctl(PR_GET_*)
and personality(0xffffffff) injected into the process. At restore every
setting is made from inside the process, credentials last of all, in each
thread (credentials are per thread, and the calls that rebuild the rest
need privileges the restored program may not have).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from vzcpt.inject.remote import RemoteTask, Syscall
from vzcpt.kernel import nr
from vzcpt.kernel.libc import own_personality, own_securebits
from vzcpt.proc import files as procfs
from vzcpt.proc.limits import parse_limits
from vzcpt.proc.stat import parse_stat
from vzcpt.proc.status import parse_status

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PRIO_PROCESS = 0
CAP_VERSION_3 = 0x20080522
CAP_LAST = 63


@dataclass
class Creds:
    uids: tuple[int, int, int, int]  # real, effective, saved, fs
    gids: tuple[int, int, int, int]
    groups: list[int]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    securebits: int
    no_new_privs: bool


@dataclass
class ProcessAttrs:
    comm: str
    umask: int
    nice: int
    personality: int
    cwd: str
    root: str
    pdeathsig: int
    dumpable: int
    subreaper: bool
    rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)


def dump_creds(pid: int, task: RemoteTask) -> Callable[[], Creds]:
    """Queue the questions; the function returned reads the answers once they ran."""
    st = parse_status(procfs.read(pid, "status"))
    securebits = task.queue(nr.PRCTL, PR_GET_SECUREBITS, 0, 0, 0, 0, what="PR_GET_SECUREBITS")
    return lambda: Creds(
        uids=st.uid,
        gids=st.gid,
        groups=list(st.groups),
        cap_inh=st.cap_inh,
        cap_prm=st.cap_prm,
        cap_eff=st.cap_eff,
        cap_bnd=st.cap_bnd,
        cap_amb=st.cap_amb,
        securebits=securebits.value,
        no_new_privs=bool(st.no_new_privs),
    )


def dump_attrs(pid: int, task: RemoteTask) -> Callable[[], ProcessAttrs]:
    """Queue the questions; the function returned reads the answers once they ran."""
    st = parse_status(procfs.read(pid, "status"))
    stat = parse_stat(procfs.read(pid, "stat"))
    pdeathsig = task.queue(nr.PRCTL, PR_GET_PDEATHSIG, bytes(4), 0, 0, 0, what="PR_GET_PDEATHSIG")
    subreaper = task.queue(nr.PRCTL, PR_GET_CHILD_SUBREAPER, bytes(4), 0, 0, 0, what="subreaper")
    personality = task.queue(nr.PERSONALITY, 0xFFFFFFFF, what="personality")
    dumpable = task.queue(nr.PRCTL, PR_GET_DUMPABLE, 0, 0, 0, 0, what="PR_GET_DUMPABLE")
    cwd = procfs.readlink(pid, "cwd")
    root = procfs.readlink(pid, "root")
    rlimits = parse_limits(procfs.read(pid, "limits"))
    return lambda: ProcessAttrs(
        comm=stat.comm,
        umask=st.umask or 0,
        nice=stat.nice,
        personality=personality.value,
        cwd=cwd,
        root=root,
        pdeathsig=pdeathsig.word(size=4),
        dumpable=dumpable.value,
        subreaper=bool(subreaper.word(size=4)),
        rlimits=rlimits,
    )


@dataclass(frozen=True)
class Baseline:
    """What every stub starts with: the restorer's own settings, inherited
    through the seed (whose cwd is /). Only what differs is set, which saves
    many injected syscalls per process."""

    attrs: ProcessAttrs
    creds: Creds


def restorer_baseline() -> Baseline:
    me = os.getpid()
    st = parse_status(procfs.read(me, "status"))
    stat = parse_stat(procfs.read(me, "stat"))
    attrs = ProcessAttrs(
        comm="",
        umask=st.umask or 0,
        nice=stat.nice,
        personality=own_personality(),
        cwd="/",
        root="/",
        pdeathsig=0,
        dumpable=1,
        subreaper=False,
        rlimits=parse_limits(procfs.read(me, "limits")),
    )
    creds = Creds(
        uids=st.uid,
        gids=st.gid,
        groups=list(st.groups),
        cap_inh=st.cap_inh,
        cap_prm=st.cap_prm,
        cap_eff=st.cap_eff,
        cap_bnd=st.cap_bnd,
        cap_amb=st.cap_amb,
        securebits=own_securebits(),
        no_new_privs=bool(st.no_new_privs),
    )
    return Baseline(attrs, creds)


def restore_attrs(
    task: RemoteTask, attrs: ProcessAttrs, base: ProcessAttrs, warnings: list[str]
) -> None:
    """Queue the settings that differ from the stub's (the restorer's own)."""
    if attrs.umask != base.umask:
        task.queue(nr.UMASK, attrs.umask, what="umask")
    if attrs.personality != base.personality:
        task.queue(nr.PERSONALITY, attrs.personality, what="personality")
    if attrs.cwd != base.cwd:
        task.queue(nr.CHDIR, attrs.cwd.encode() + b"\0", what=f"chdir {attrs.cwd}")
    if attrs.root != base.root:
        task.queue(nr.CHROOT, attrs.root.encode() + b"\0", what=f"chroot {attrs.root}")
    if attrs.nice != base.nice:
        task.queue(nr.SETPRIORITY, PRIO_PROCESS, 0, attrs.nice, what="setpriority")
    if attrs.subreaper:
        task.queue(nr.PRCTL, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, what="PR_SET_CHILD_SUBREAPER")
    changed = {r: v for r, v in attrs.rlimits.items() if base.rlimits.get(r) != v}
    restore_rlimits(task, changed, warnings)


def restore_attrs_after_creds(task: RemoteTask, attrs: ProcessAttrs) -> None:
    """Queue what a change of credentials resets: the dumpable flag and the parent-death signal."""
    task.queue(nr.PRCTL, PR_SET_DUMPABLE, attrs.dumpable, 0, 0, 0, what="PR_SET_DUMPABLE")
    if attrs.pdeathsig:
        task.queue(nr.PRCTL, PR_SET_PDEATHSIG, attrs.pdeathsig, 0, 0, 0, what="PR_SET_PDEATHSIG")


def restore_rlimits(
    task: RemoteTask, limits: dict[int, tuple[int, int]], warnings: list[str]
) -> None:
    """Queue the limits, set from inside.

    A hard limit above ours cannot be raised without CAP_SYS_RESOURCE: that
    call fails, and then the soft limit is set under the hard limit the task
    has (which needs no privilege), with a warning.
    """
    for resource, (soft, hard) in sorted(limits.items()):

        def keep_ours(failed: Syscall, resource: int = resource, soft: int = soft) -> None:
            got = task.queue(nr.PRLIMIT64, 0, resource, 0, bytes(16), what="prlimit64")
            task.flush()
            own = got.word(0, 8)  # rlim_max
            task.queue(nr.PRLIMIT64, 0, resource, _rlimit(min(soft, own), own), 0, what="prlimit64")
            warnings.append(
                f"process {task.tid}: rlimit {resource} hard limit {limits[resource][1]} is "
                f"above the restorer's own ({own}); kept {own}"
            )

        task.queue(
            nr.PRLIMIT64,
            0,
            resource,
            _rlimit(soft, hard),
            0,
            what=f"prlimit64 of rlimit {resource}",
            on_failure=keep_ours,
        )


def _rlimit(soft: int, hard: int) -> bytes:
    """struct rlimit64."""
    return soft.to_bytes(8, "little") + hard.to_bytes(8, "little")


def restore_creds(task: RemoteTask, creds: Creds, base: Creds) -> None:
    """Queue the calls that make the thread who it was. They run last: afterwards
    we may lack the privileges the rest needs."""
    if creds == base:
        return  # the restorer's own: the stub has them already
    restorer_caps = base.cap_prm
    for cap in range(CAP_LAST + 1):
        if base.cap_bnd & (1 << cap) and not creds.cap_bnd & (1 << cap):
            task.queue(
                nr.PRCTL, PR_CAPBSET_DROP, cap, 0, 0, 0, what="PR_CAPBSET_DROP", may_fail=True
            )
    task.queue(nr.PRCTL, PR_SET_KEEPCAPS, 1, 0, 0, 0, what="PR_SET_KEEPCAPS")
    groups = b"".join(g.to_bytes(4, "little") for g in creds.groups)
    task.queue(nr.SETGROUPS, len(creds.groups), groups or bytes(4), what="setgroups")
    task.queue(nr.SETRESGID, *creds.gids[:3], what="setresgid")
    task.queue(nr.SETRESUID, *creds.uids[:3], what="setresuid")
    # These return the previous id, never an error.
    task.queue(nr.SETFSGID, creds.gids[3], what="setfsgid", may_fail=True)
    task.queue(nr.SETFSUID, creds.uids[3], what="setfsuid", may_fail=True)
    # setresuid() away from root cleared the effective set; the stub still
    # permits what the restorer had: make all of it effective to finish up.
    _capset(task, restorer_caps, restorer_caps, creds.cap_inh & restorer_caps)
    task.queue(nr.PRCTL, PR_SET_SECUREBITS, creds.securebits, 0, 0, 0, what="PR_SET_SECUREBITS")
    for cap in range(CAP_LAST + 1):
        if creds.cap_amb & (1 << cap):
            task.queue(
                nr.PRCTL,
                PR_CAP_AMBIENT,
                PR_CAP_AMBIENT_RAISE,
                cap,
                0,
                0,
                what="PR_CAP_AMBIENT_RAISE",
            )
    _capset(task, creds.cap_eff, creds.cap_prm, creds.cap_inh)
    if creds.no_new_privs:
        task.queue(nr.PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, what="PR_SET_NO_NEW_PRIVS")


def _capset(task: RemoteTask, eff: int, prm: int, inh: int) -> None:
    header = CAP_VERSION_3.to_bytes(4, "little") + bytes(4)
    data = b""
    for half in (0, 32):
        for value in (eff, prm, inh):
            data += ((value >> half) & 0xFFFFFFFF).to_bytes(4, "little")
    task.queue(nr.CAPSET, header, data, what="capset")
