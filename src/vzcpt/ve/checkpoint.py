"""Checkpoint and restore of a whole VE: the engine, plus what makes a VE a VE.

chkpnt: a VE with much memory is pre-copied first, while it runs (the
pages it writes meanwhile are copied again once it is frozen); then the
VE's network is locked (no packet in or out, no reset sent), its processes
frozen; if its listeners hold connections not yet accepted,
it is thawed until it has accepted them, new connections to them dropped
inside the VE (`suspend`), and frozen again. Its process tree — rooted at
its init — is dumped with the ids its programs know, together with a
`VeRecord` (its config and network), and killed once the dump is safe on
disk; then its network, cgroups and root are taken down. A failed dump
unlocks the network and leaves the VE running.

restore: the VE's root is mounted and its cgroups made with the limits it
had (as at start, plus any set without --save since); a
launcher unshares the VE's namespaces and makes the seed of the restore its
pid 1, inside the VE's root with its hostname; the host gives it its veth,
locked, and its /dev/shm files, System V IPC objects (same ids) and POSIX
message queues come back; the engine turns the seed into the saved init and rebuilds every
process under it; then the network is unlocked. A failed restore removes
everything it built.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from vzcpt.dump import dump_tree
from vzcpt.errors import VzcptError
from vzcpt.image.reader import open_dump
from vzcpt.image.schema import record
from vzcpt.kernel import nftables
from vzcpt.resources import mqueue, sysvipc
from vzcpt.resources.accept_queue import DRAIN_TIMEOUT_S, drain
from vzcpt.resources.context import Stats
from vzcpt.resources.netlock import NetworkHold
from vzcpt.restore import restore_tree
from vzcpt.restore.seed import become_seed
from vzcpt.ve import net, uts
from vzcpt.ve.cgroups import VeCgroups
from vzcpt.ve.config import VeConfig
from vzcpt.ve.launch import launch_pid1
from vzcpt.ve.mounts import VeMount, dump_mounts, restore_mounts
from vzcpt.ve.sysctl import dump_sysctls, restore_sysctls


@record("ve")
@dataclass
class VeRecord:
    """What the dump of a VE holds besides its processes."""

    veid: int
    config: str  # the VE's config file as it was
    hostname: str  # as the VE's UTS namespace had it (programs may change it)
    network: list[net.Iface]
    mounts: list[VeMount] = field(default_factory=list)  # in mount order (ve/mounts.py)
    ipc: sysvipc.IpcRecord | None = None  # the System V objects of its IPC namespace
    mqueues: mqueue.MqRecord | None = None  # the POSIX message queues of its IPC namespace
    sysctls: dict[str, str] = field(default_factory=dict)  # its network namespace's
    # The cgroup limits in force (those set without --save too): ram_bytes,
    # swap_bytes, cpus, numproc; None is unlimited.
    limits: dict[str, float | None] = field(default_factory=dict)
    domainname: str = ""  # its UTS namespace's NIS domain name


def ve_record(
    veid: int, init_pid: int, cfg: VeConfig, private: str, cgroups: VeCgroups
) -> VeRecord:
    """Taken while the VE is frozen, so that it matches the processes."""
    hostname, domainname = uts.dump_names(init_pid)
    return VeRecord(
        veid=veid,
        config=cfg.dumps(),
        hostname=hostname,
        domainname=domainname,
        network=net.read_network(init_pid),
        mounts=dump_mounts(init_pid, private),
        ipc=sysvipc.dump_ipc(init_pid),
        mqueues=mqueue.dump_mqueues(init_pid),
        sysctls=dump_sysctls(init_pid),
        limits=cgroups.read_limits(),
    )


def dump_ve(
    veid: int,
    init_pid: int,
    cfg: VeConfig,
    private: str,
    cgroups: VeCgroups,
    dumpfile: str,
    stats: Stats,
    *,
    kill: bool,
    drain_timeout: float = DRAIN_TIMEOUT_S,
) -> None:
    """Dump the VE, frozen by its cgroup with its network locked.

    With `kill` (vzctl chkpnt) a running VE is pre-copied if it holds much
    memory, then suspended (its accept queues drained), and killed once the
    dump is safe; a failure thaws and unlocks it, running on. Without
    (chkpnt --dump) the VE is already suspended and stays so, whatever
    happens.
    """

    suspended: list[NetworkHold] = []

    def suspend_ve() -> None:
        suspended.append(suspend(veid, cgroups, stats, drain_timeout))

    def dump() -> None:
        dump_tree(
            init_pid,
            dumpfile,
            leave="kill" if kill else "running",
            own_pid_namespace=True,
            extra_records=[ve_record(veid, init_pid, cfg, private, cgroups)],
            stats=stats,
            held_by=cgroups,
            # A running VE is pre-copied before it is suspended (resources/precopy.py).
            suspend=suspend_ve if kill else None,
        )

    if not kill:
        dump()
        return
    try:
        dump()
    except BaseException:
        if suspended:  # else it never stopped running
            try:
                suspended[0].release()
            finally:
                cgroups.thaw()
                net.unlock_network(veid)
        raise
    suspended[0].keep()  # gone with the VE's network namespace


def suspend(veid: int, cgroups: VeCgroups, stats: Stats, drain_timeout: float) -> NetworkHold:
    """Lock the VE's network and freeze it, its accept queues drained; on failure it runs on.

    If connections wait on its listeners, the VE is thawed until it has
    accepted them (resources/accept_queue.py), and frozen again. Clients
    outside are held off by the veth's lock; the SYNs of those inside are
    dropped in the VE's namespace by the table of the hold returned (empty
    if no queue was drained), until it is released or the VE dies.
    """
    net.lock_network(veid)
    syn_drop = NetworkHold()
    try:
        cgroups.freeze()
        try:
            drain(_FrozenVe(cgroups), syn_drop, stats, drain_timeout).close()
        except BaseException:
            try:
                syn_drop.release()
            finally:
                cgroups.thaw()
            raise
    except BaseException:
        net.unlock_network(veid)
        raise
    return syn_drop


class _FrozenVe:
    """A VE frozen by its cgroup, as `accept_queue.drain` lets it run and stops it."""

    def __init__(self, cgroups: VeCgroups) -> None:
        self.cgroups = cgroups

    def processes(self) -> list[int]:
        return self.cgroups.pids()

    def resume(self) -> None:
        self.cgroups.thaw()

    def refreeze(self) -> None:
        self.cgroups.freeze()


def release_syn_drop(init_pid: int, table: str) -> None:
    """Remove the table `suspend` left in the VE's network namespace (if still there)."""
    ns_fd = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        nftables.unlock(table, ns_fd)
    finally:
        os.close(ns_fd)


def read_ve_record(dumpfile: str, veid: int) -> VeRecord:
    """The VE part of a dump, checked to be a VE's (and this VE's)."""
    with open_dump(dumpfile) as image:
        found = image.records_of(VeRecord)
    if not found:
        raise VzcptError(
            f"{dumpfile} is the dump of a process tree, not of a VE: restore it with vzcpt restore"
        )
    if found[0].veid != veid:
        raise VzcptError(f"{dumpfile} is the dump of VE {found[0].veid}, not of VE {veid}")
    return found[0]


def restore(
    veid: int,
    root: str,
    cgroups: VeCgroups,
    ve: VeRecord,
    cfg: VeConfig,
    dumpfile: str,
    stats: Stats,
    frozen: bool = False,
) -> int:
    """Rebuild the VE under `root` (mounted) and `cgroups` (made); return its init's host pid.

    With `frozen` (restore --undump) it is left frozen with its network locked.
    """
    hostname = ve.hostname or cfg.hostname or f"ve{veid}"  # the live name, as the VE knew it
    if ve.limits:  # as they were, not only as the config says: before anything runs
        cgroups.apply_limits(ve.limits)

    def launch_init(channel_fd: int, theirs: socket.socket) -> int:
        pid = _launch_seed(root, (hostname, ve.domainname), cgroups, channel_fd, theirs)
        net.setup_network(veid, pid, cfg.ip_addresses, hostname, locked=True)
        restore_sysctls(pid, ve.sysctls)
        restore_mounts(pid, ve.mounts)
        if ve.ipc is not None:  # before any process attaches a segment again
            sysvipc.restore_ipc(pid, ve.ipc)
        if ve.mqueues is not None:  # before any process opens one again
            mqueue.restore_mqueues(pid, ve.mqueues)
        return pid

    try:
        init_pid = restore_tree(
            dumpfile, stats=stats, launch_init=launch_init, hold=cgroups if frozen else None
        )
    except BaseException:
        net.teardown_network(veid)
        raise
    if not frozen:
        net.unlock_network(veid)
    return init_pid


def _launch_seed(
    root: str,
    names: tuple[str, str],
    cgroups: VeCgroups,
    channel_fd: int,
    theirs: socket.socket,
) -> int:
    """Start pid 1 of a fresh VE, in its root, named as it was, as the seed of the restore."""
    hostname, domainname = names
    return launch_pid1(root, hostname, cgroups, lambda: become_seed(channel_fd, theirs), domainname)
