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
from dataclasses import dataclass, field

from vzcpt.inject.remote import RemoteTask, errno_of
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


def dump_creds(pid: int, task: RemoteTask) -> Creds:
    st = parse_status(procfs.read(pid, "status"))
    return Creds(
        uids=st.uid,
        gids=st.gid,
        groups=list(st.groups),
        cap_inh=st.cap_inh,
        cap_prm=st.cap_prm,
        cap_eff=st.cap_eff,
        cap_bnd=st.cap_bnd,
        cap_amb=st.cap_amb,
        securebits=task.call(nr.PRCTL, PR_GET_SECUREBITS, 0, 0, 0, 0, what="PR_GET_SECUREBITS"),
        no_new_privs=bool(st.no_new_privs),
    )


def dump_attrs(pid: int, task: RemoteTask) -> ProcessAttrs:
    st = parse_status(procfs.read(pid, "status"))
    stat = parse_stat(procfs.read(pid, "stat"))
    task.call(nr.PRCTL, PR_GET_PDEATHSIG, task.scratch, 0, 0, 0, what="PR_GET_PDEATHSIG")
    pdeathsig = int.from_bytes(task.get(0, 4), "little")
    task.call(nr.PRCTL, PR_GET_CHILD_SUBREAPER, task.scratch, 0, 0, 0, what="subreaper")
    subreaper = bool(int.from_bytes(task.get(0, 4), "little"))
    return ProcessAttrs(
        comm=stat.comm,
        umask=st.umask or 0,
        nice=stat.nice,
        personality=task.call(nr.PERSONALITY, 0xFFFFFFFF, what="personality"),
        cwd=procfs.readlink(pid, "cwd"),
        root=procfs.readlink(pid, "root"),
        pdeathsig=pdeathsig,
        dumpable=task.call(nr.PRCTL, PR_GET_DUMPABLE, 0, 0, 0, 0, what="PR_GET_DUMPABLE"),
        subreaper=subreaper,
        rlimits=parse_limits(procfs.read(pid, "limits")),
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
    if attrs.umask != base.umask:
        task.call(nr.UMASK, attrs.umask, what="umask")
    if attrs.personality != base.personality:
        task.call(nr.PERSONALITY, attrs.personality, what="personality")
    if attrs.cwd != base.cwd:
        path = task.put(0, attrs.cwd.encode() + b"\0")
        task.call(nr.CHDIR, path, what=f"chdir {attrs.cwd}")
    if attrs.root != base.root:
        path = task.put(0, attrs.root.encode() + b"\0")
        task.call(nr.CHROOT, path, what=f"chroot {attrs.root}")
    if attrs.nice != base.nice:
        task.call(nr.SETPRIORITY, PRIO_PROCESS, 0, attrs.nice, what="setpriority")
    if attrs.subreaper:
        task.call(nr.PRCTL, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, what="PR_SET_CHILD_SUBREAPER")
    changed = {r: v for r, v in attrs.rlimits.items() if base.rlimits.get(r) != v}
    restore_rlimits(task, changed, warnings)


def restore_attrs_after_creds(task: RemoteTask, attrs: ProcessAttrs) -> None:
    """What a change of credentials resets: the dumpable flag and the parent-death signal."""
    task.call(nr.PRCTL, PR_SET_DUMPABLE, attrs.dumpable, 0, 0, 0, what="PR_SET_DUMPABLE")
    if attrs.pdeathsig:
        task.call(nr.PRCTL, PR_SET_PDEATHSIG, attrs.pdeathsig, 0, 0, 0, what="PR_SET_PDEATHSIG")


def restore_rlimits(
    task: RemoteTask, limits: dict[int, tuple[int, int]], warnings: list[str]
) -> None:
    """Set limits from inside: hard limits above ours cannot be raised (no CAP_SYS_RESOURCE)."""
    for resource, (soft, hard) in sorted(limits.items()):
        task.put(0, soft.to_bytes(8, "little") + hard.to_bytes(8, "little"))
        result = task.call_raw(nr.PRLIMIT64, 0, resource, task.scratch, 0)
        if errno_of(result):
            task.call(nr.PRLIMIT64, 0, resource, 0, task.scratch + 16, what="prlimit64")
            current = task.get(16, 16)
            cur_hard = int.from_bytes(current[8:16], "little")
            task.put(0, min(soft, cur_hard).to_bytes(8, "little") + current[8:16])
            task.call_raw(nr.PRLIMIT64, 0, resource, task.scratch, 0)
            warnings.append(
                f"process {task.tid}: rlimit {resource} hard limit {hard} is above "
                f"the restorer's own ({cur_hard}); kept {cur_hard}"
            )


def restore_creds(task: RemoteTask, creds: Creds, base: Creds) -> None:
    """Become who the thread was. Runs last: afterwards we may lack privileges."""
    if creds == base:
        return  # the restorer's own: the stub has them already
    restorer_caps = base.cap_prm
    for cap in range(CAP_LAST + 1):
        if base.cap_bnd & (1 << cap) and not creds.cap_bnd & (1 << cap):
            task.call_raw(nr.PRCTL, PR_CAPBSET_DROP, cap, 0, 0, 0)
    task.call(nr.PRCTL, PR_SET_KEEPCAPS, 1, 0, 0, 0, what="PR_SET_KEEPCAPS")
    groups = b"".join(g.to_bytes(4, "little") for g in creds.groups)
    task.put(0, groups or b"\0\0\0\0")
    task.call(nr.SETGROUPS, len(creds.groups), task.scratch, what="setgroups")
    task.call(nr.SETRESGID, *creds.gids[:3], what="setresgid")
    task.call(nr.SETRESUID, *creds.uids[:3], what="setresuid")
    task.call_raw(nr.SETFSGID, creds.gids[3])
    task.call_raw(nr.SETFSUID, creds.uids[3])
    # setresuid() away from root cleared the effective set; the stub still
    # permits what the restorer had: make all of it effective to finish up.
    _capset(task, restorer_caps, restorer_caps, creds.cap_inh & restorer_caps)
    task.call(nr.PRCTL, PR_SET_SECUREBITS, creds.securebits, 0, 0, 0, what="PR_SET_SECUREBITS")
    for cap in range(CAP_LAST + 1):
        if creds.cap_amb & (1 << cap):
            task.call(
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
        task.call(nr.PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, what="PR_SET_NO_NEW_PRIVS")


def _capset(task: RemoteTask, eff: int, prm: int, inh: int) -> None:
    header = CAP_VERSION_3.to_bytes(4, "little") + bytes(4)
    data = b""
    for half in (0, 32):
        for value in (eff, prm, inh):
            data += ((value >> half) & 0xFFFFFFFF).to_bytes(4, "little")
    task.put(0, header + data)
    task.call(nr.CAPSET, task.scratch, task.scratch + 8, what="capset")
