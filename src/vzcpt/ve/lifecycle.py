"""A VE's life: create, start, exec, enter, set, stop, destroy — OpenVZ's vzctl, as an API.

Every operation takes the VE's lock, reads its recorded state, checks the
transition (ve/state.py) and records the new state only once the work is
done; a failure half-way undoes what that operation built.

Starting a VE: its root is mounted (private area plus the host's system
directories read-only), its cgroups made and limited; a launcher process
joins the cgroups, unshares the mount, UTS, IPC, network, pid and cgroup
namespaces and forks the VE's init, which sets the hostname, enters the
root (its own /proc, /sys, /dev, devpts) and execs. The launcher exits, so
init, pid 1 inside, is left to the host like any daemon. Then the host gives
the VE its veth and addresses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from vzcpt.errors import VzcptError
from vzcpt.proc import files as procfs
from vzcpt.proc.stat import parse_stat
from vzcpt.resources.accept_queue import DRAIN_TIMEOUT_S
from vzcpt.resources.context import Stats
from vzcpt.ve import checkpoint, console, init, net, rootfs, templates
from vzcpt.ve.cgroups import VeCgroups
from vzcpt.ve.config import VeConfig, load_global, load_ve
from vzcpt.ve.launch import launch_pid1
from vzcpt.ve.paths import Paths
from vzcpt.ve.state import (
    StateRecord,
    VeLock,
    VeState,
    check_transition,
    commit_transition,
    load_state,
)

VE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_TIMEOUT = 10.0
SYN_DROP = "syn_drop"  # state note: the table dropping SYNs in a suspended VE (checkpoint.suspend)


@dataclass
class VeStatus:
    veid: int
    state: VeState
    init_pid: int | None
    processes: int
    addresses: list[str]
    hostname: str | None


class VE:
    """One VE, by its VEID, under the paths of this host (VZCPT_ROOT)."""

    def __init__(self, veid: int, paths: Paths | None = None) -> None:
        self.veid = veid
        self.paths = paths or Paths.from_env()

    # --- reading -----------------------------------------------------------

    def config(self) -> VeConfig:
        return load_ve(self.paths, self.veid)

    def state(self) -> StateRecord:
        """The recorded state, corrected if the VE's init died behind our back."""
        rec = load_state(self.paths, self.veid)
        if rec.state.has_processes and not self._init_alive(rec):
            self._cleanup_after_init()
            rec = commit_transition(self.paths, rec, "stop")
        return rec

    def status(self) -> VeStatus:
        rec = self.state()
        cfg = load_ve(self.paths, self.veid, missing_ok=True)
        processes = len(VeCgroups(self.veid).pids()) if rec.state.has_processes else 0
        return VeStatus(
            self.veid, rec.state, rec.init_pid, processes, cfg.ip_addresses, cfg.hostname
        )

    # --- lifecycle -----------------------------------------------------------

    def create(
        self,
        ostemplate: str | None = None,
        hostname: str | None = None,
        addresses: list[str] | None = None,
    ) -> None:
        with VeLock(self.paths, self.veid):
            rec = load_state(self.paths, self.veid)
            check_transition("create", rec.state, self.veid)
            defaults = load_global(self.paths)
            template = ostemplate or defaults.get("DEF_OSTEMPLATE") or templates.BUILTIN
            templates.create_private(self.paths, self.veid, template)
            try:
                cfg = VeConfig(path=self.paths.ve_conf(self.veid), defaults=defaults)
                cfg.set("VE_ROOT", "/vz/root/$VEID")
                cfg.set("VE_PRIVATE", "/vz/private/$VEID")
                cfg.ostemplate = template
                if hostname:
                    cfg.hostname = hostname
                for address in addresses or []:
                    cfg.add_ip(address)
                self.paths.conf_dir.mkdir(parents=True, exist_ok=True)
                cfg.save()
            except BaseException:
                templates.remove_tree(str(self.paths.private(self.veid)))
                raise
            commit_transition(self.paths, rec, "create")

    def start(self) -> int:
        """Start the VE; return the host pid of its init."""
        with VeLock(self.paths, self.veid):
            rec = self.state()
            check_transition("start", rec.state, self.veid)
            cfg = self.config()
            root = rootfs.mount_root(self.paths, self.veid)
            cgroups = VeCgroups(self.veid)
            init_pid = None
            try:
                _make_cgroups(cgroups, cfg)
                self._write_resolv_conf(cfg)
                init_pid = _spawn_init(
                    root, cfg.hostname or f"ve{self.veid}", cgroups, cfg.get("INIT")
                )
                net.setup_network(self.veid, init_pid, cfg.ip_addresses, cfg.hostname)
            except BaseException:
                if init_pid is not None:
                    _kill_and_wait(init_pid)
                net.teardown_network(self.veid)
                with contextlib.suppress(VzcptError):
                    cgroups.destroy(kill=True)
                rootfs.umount_root(self.paths, self.veid)
                raise
            rec.init_pid = init_pid
            rec.extra["init_start"] = str(parse_stat(procfs.read(init_pid, "stat")).starttime)
            commit_transition(self.paths, rec, "start")
            return init_pid

    def stop(self) -> None:
        with VeLock(self.paths, self.veid):
            rec = self.state()
            check_transition("stop", rec.state, self.veid)
            if rec.init_pid is not None and self._init_alive(rec):
                if rec.state.frozen:
                    VeCgroups(self.veid).thaw()  # a frozen init cannot act on SIGTERM
                _stop_init(rec.init_pid)
            self._cleanup_after_init()
            commit_transition(self.paths, rec, "stop")

    def restart(self) -> int:
        if self.state().state == VeState.RUNNING:
            self.stop()
        return self.start()

    def destroy(self) -> None:
        with VeLock(self.paths, self.veid):
            rec = self.state()
            check_transition("destroy", rec.state, self.veid)
            rootfs.umount_root(self.paths, self.veid)
            templates.remove_tree(str(self.paths.private(self.veid)))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.ve_conf(self.veid))
            commit_transition(self.paths, rec, "destroy")

    # --- checkpoint and restore ------------------------------------------------

    def chkpnt(
        self,
        dumpfile: str | None = None,
        stats: Stats | None = None,
        drain_timeout: float = DRAIN_TIMEOUT_S,
    ) -> str:
        """Suspend, dump and kill the VE (vzctl chkpnt); return the dump file's path."""
        return self._dump("chkpnt", dumpfile, stats, drain_timeout)

    def restore(
        self, dumpfile: str | None = None, stats: Stats | None = None, *, frozen: bool = False
    ) -> int:
        """Undump and resume the VE (vzctl restore); with `frozen` (restore --undump)
        leave it frozen, network locked. Return its init's host pid."""
        op = "undump" if frozen else "restore"
        with VeLock(self.paths, self.veid):
            rec = self.state()
            check_transition(op, rec.state, self.veid)
            path = dumpfile or rec.dumpfile or str(self.paths.default_dumpfile(self.veid))
            ve = checkpoint.read_ve_record(path, self.veid)
            cfg = self.config()
            root = rootfs.mount_root(self.paths, self.veid)
            cgroups = VeCgroups(self.veid)
            try:
                _make_cgroups(cgroups, cfg)
                init_pid = checkpoint.restore(
                    self.veid, root, cgroups, ve, cfg, path, stats or Stats(), frozen=frozen
                )
            except BaseException:
                self._cleanup_after_init()
                raise
            rec.init_pid = init_pid
            rec.dumpfile = path
            rec.extra.pop(SYN_DROP, None)  # that of the VE dumped, gone with it
            rec.extra["init_start"] = str(parse_stat(procfs.read(init_pid, "stat")).starttime)
            commit_transition(self.paths, rec, op)
            return init_pid

    # --- the stages of chkpnt and restore, each its own command ------------------

    def suspend(self, stats: Stats | None = None, drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
        """chkpnt --suspend: lock the network and freeze every process, once the
        connections waiting on the VE's listeners are accepted (checkpoint.suspend)."""
        with VeLock(self.paths, self.veid):
            rec = self.state()
            check_transition("suspend", rec.state, self.veid)
            syn_drop = checkpoint.suspend(
                self.veid, VeCgroups(self.veid), stats or Stats(), drain_timeout
            )
            rec.extra.pop(SYN_DROP, None)
            if syn_drop.locked:
                rec.extra[SYN_DROP] = syn_drop.table  # removed when the VE resumes
            syn_drop.keep()
            commit_transition(self.paths, rec, "suspend")

    def dump(self, dumpfile: str | None = None, stats: Stats | None = None) -> str:
        """chkpnt --dump: save a suspended VE; it stays suspended."""
        return self._dump("dump", dumpfile, stats)

    def _dump(
        self,
        op: str,
        dumpfile: str | None,
        stats: Stats | None,
        drain_timeout: float = DRAIN_TIMEOUT_S,
    ) -> str:
        with VeLock(self.paths, self.veid):
            rec = self.state()
            check_transition(op, rec.state, self.veid)
            assert rec.init_pid is not None
            path = dumpfile or str(self.paths.default_dumpfile(self.veid))
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            kill = op == "chkpnt"
            checkpoint.dump_ve(
                self.veid,
                rec.init_pid,
                self.config(),
                str(self.paths.private(self.veid)),
                VeCgroups(self.veid),
                path,
                stats or Stats(),
                kill=kill,
                drain_timeout=drain_timeout,
            )
            if kill:
                self._cleanup_after_init()
            rec.dumpfile = path
            commit_transition(self.paths, rec, op)
            return path

    def kill(self) -> None:
        """chkpnt --kill (after a dump) or restore --kill (after an undump)."""
        with VeLock(self.paths, self.veid):
            rec = self.state()
            op = "restore-kill" if rec.state == VeState.RESTORED_FROZEN else "kill"
            check_transition(op, rec.state, self.veid)
            self._cleanup_after_init()
            commit_transition(self.paths, rec, op)

    def resume(self) -> None:
        """chkpnt --resume / restore --resume: thaw and unlock the network."""
        with VeLock(self.paths, self.veid):
            rec = self.state()
            check_transition("resume", rec.state, self.veid)
            table = rec.extra.pop(SYN_DROP, None)
            if table is not None and rec.init_pid is not None:
                checkpoint.release_syn_drop(rec.init_pid, table)
            VeCgroups(self.veid).thaw()
            net.unlock_network(self.veid)
            commit_transition(self.paths, rec, "resume")

    # --- inside --------------------------------------------------------------

    def require(self, operation: str) -> None:
        """Refuse, in one line, an operation the VE's present state does not allow."""
        check_transition(operation, self.state().state, self.veid)

    def exec(self, command: list[str], *, interactive: bool = False) -> int:
        """Run a command inside the running VE; return its exit status.

        `interactive` (vzctl enter) from a terminal: the command gets a pty of
        the VE's own (ve/console.py); otherwise it shares our descriptors.
        """
        rec = self.state()
        check_transition("enter" if interactive else "exec", rec.state, self.veid)
        assert rec.init_pid is not None
        cgroups = VeCgroups(self.veid)
        argv = [
            "nsenter",
            f"--target={rec.init_pid}",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--pid",
            "--cgroup",
            "--root",
            "--wd",  # the target's cwd, "/" of the VE (a path here would be the host's)
            "--",
            "/usr/bin/env",
            "-i",
            f"PATH={VE_PATH}",
            "HOME=/root",
            f"TERM={os.environ.get('TERM', 'dumb')}",
            *command,
        ]
        if interactive and os.isatty(0):
            ptmx = f"/proc/{rec.init_pid}/root/dev/pts/ptmx"
            return console.run_on_pty(argv, ptmx, lambda: cgroups.add(os.getpid()))
        proc = subprocess.run(
            argv, cwd="/", preexec_fn=lambda: cgroups.add(os.getpid()), check=False
        )
        return proc.returncode

    def set(
        self,
        *,
        hostname: str | None = None,
        add_ips: list[str] | None = None,
        del_ips: list[str] | None = None,
        nameservers: list[str] | None = None,
        ram_bytes: int | None = None,
        swap_bytes: int | None = None,
        cpus: int | None = None,
        numproc: str | None = None,
        init: str | None = None,
        save: bool = False,
    ) -> None:
        """Change settings; applied at once to a running VE, kept in the config with save."""
        with VeLock(self.paths, self.veid):
            rec = self.state()
            check_transition("set", rec.state, self.veid)
            cfg = self.config()
            running = rec.state == VeState.RUNNING and rec.init_pid is not None
            for address in add_ips or []:
                address = cfg.add_ip(address)
                if running:
                    net.add_address(self.veid, rec.init_pid or 0, address)
            for address in del_ips or []:
                if running:
                    net.del_address(self.veid, rec.init_pid or 0, address)
                cfg.del_ip(address)
            if hostname is not None:
                cfg.hostname = hostname
                if running:
                    self._run_inside(rec, ["hostname", hostname])
            if nameservers is not None:
                cfg.nameservers = nameservers
            if ram_bytes is not None:
                cfg.ram_bytes = ram_bytes
            if swap_bytes is not None:
                cfg.swap_bytes = swap_bytes
            if cpus is not None:
                cfg.cpus = cpus
            if numproc is not None:
                cfg.set_numproc(numproc)
            if init is not None:  # the VE's own init program, from its next start on
                if init in ("", "vzcpt"):
                    cfg.remove("INIT")
                else:
                    cfg.set("INIT", init)
            if running:
                VeCgroups(self.veid).set_limits(
                    ram_bytes=ram_bytes, swap_bytes=swap_bytes, cpus=cpus, numproc=cfg.numproc
                )
            if hostname is not None or nameservers is not None:
                self._write_etc(cfg)
            if save:
                cfg.save()

    # --- helpers ---------------------------------------------------------------

    def _init_alive(self, rec: StateRecord) -> bool:
        if rec.init_pid is None:
            return False
        try:
            stat = parse_stat(procfs.read(rec.init_pid, "stat"))
        except VzcptError:
            return False
        return stat.state not in "ZX" and str(stat.starttime) == rec.extra.get("init_start")

    def _cleanup_after_init(self) -> None:
        net.teardown_network(self.veid)
        cgroups = VeCgroups(self.veid)
        if cgroups.exists():
            cgroups.destroy(kill=True)
        cgroups.remove_parent()  # the shared vzcpt/ directories, once no VE uses them
        rootfs.umount_root(self.paths, self.veid)

    def _run_inside(self, rec: StateRecord, command: list[str]) -> None:
        status = self.exec(command)
        if status != 0:
            raise VzcptError(f"VE {self.veid}: {' '.join(command)} failed (exit {status})")

    def _write_etc(self, cfg: VeConfig) -> None:
        etc = self.paths.private(self.veid) / "etc"
        if cfg.hostname:
            (etc / "hostname").write_text(cfg.hostname + "\n")
        self._write_resolv_conf(cfg)

    def _write_resolv_conf(self, cfg: VeConfig) -> None:
        if cfg.nameservers:
            resolv = self.paths.private(self.veid) / "etc" / "resolv.conf"
            with contextlib.suppress(FileNotFoundError):
                resolv.unlink()  # the template's may be a symlink: never write through it
            resolv.write_text("".join(f"nameserver {ns}\n" for ns in cfg.nameservers))


def list_ves(paths: Paths | None = None) -> list[VeStatus]:
    """Every VE this host knows: a config file or a private area."""
    paths = paths or Paths.from_env()
    veids: set[int] = set()
    if paths.conf_dir.is_dir():
        veids |= {int(p.stem) for p in paths.conf_dir.glob("*.conf") if p.stem.isdigit()}
    private_root = paths.private(1).parent
    if private_root.is_dir():
        veids |= {int(p.name) for p in private_root.iterdir() if p.name.isdigit()}
    return [VE(veid, paths).status() for veid in sorted(veids)]


def _make_cgroups(cgroups: VeCgroups, cfg: VeConfig) -> None:
    """The VE's cgroups, with the limits of its config."""
    cgroups.create()
    cgroups.set_limits(
        ram_bytes=cfg.ram_bytes, swap_bytes=cfg.swap_bytes, cpus=cfg.cpus, numproc=cfg.numproc
    )


def _spawn_init(root: str, hostname: str, cgroups: VeCgroups, program: str | None) -> int:
    """Launch the VE's init (vzcpt's reaper, or the VE's own `program`); return its host pid."""
    return launch_pid1(root, hostname, cgroups, lambda: _exec_init(program))


def _exec_init(program: str | None) -> None:
    """Become the VE's init, nothing open but /dev/null (and, for vzcpt's own init, its
    source on stdin). Never returns."""
    if program:
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, 65536)  # the launcher's report pipe too
        os.execve(program, [program], {"PATH": VE_PATH, "HOME": "/root", "container": "vzcpt"})
    source_r, source_w = os.pipe()
    os.write(source_w, init.SOURCE.encode())  # far below a pipe's capacity
    os.close(source_w)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(source_r, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.closerange(3, 65536)  # the launcher's report pipe too
    os.execve(init.INTERPRETER, init.argv(), {"PATH": VE_PATH, "HOME": "/root"})


def _stop_init(pid: int) -> None:
    """SIGTERM to init (it stops the VE's processes and exits), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, STOP_TIMEOUT):
        _kill_and_wait(pid)


def _kill_and_wait(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, STOP_TIMEOUT)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if parse_stat(procfs.read(pid, "stat")).state in "ZX":
                return True
        except VzcptError:
            return True
        time.sleep(0.02)
    return False
