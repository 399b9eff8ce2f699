"""One cgroup per VE, on cgroup v1, v2 or both (hybrid hosts).

Layout: `<mountpoint>/<parent>/<VEID>` ("vzcpt/101" by default) in every
hierarchy used: each v1 hierarchy carrying memory, pids, cpu or freezer, and
the v2 (unified) hierarchy when one is mounted (/sys/fs/cgroup on v2-only
hosts, /sys/fs/cgroup/unified on hybrid ones). A process belongs to exactly one
cgroup per hierarchy, so a VE's processes are in all of these at once.

Each limit goes where its controller is: a controller bound to a v1 hierarchy
cannot be enabled in v2, so v1 wins when present, else v2 (enabled in the
`cgroup.subtree_control` of the root and of `<parent>` on demand).

Freezing: the v2 freezer is core cgroup2 (no controller to bind), reports
completion in `cgroup.events`, and lets SIGKILL through to frozen tasks, so
`freezer="auto"` uses it whenever the VE has a v2 cgroup, and the v1 freezer
(`freezer.state`) only on v1-only hosts. Both work on a hybrid host, as they
are separate hierarchies; `freezer="v1"` or `"v2"` forces one.

Only plain file writes: no ctypes needed.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from vzcpt.errors import ProcessGone, SyscallFailed, Unsupported, VzcptError
from vzcpt.proc.mountinfo import own_mounts, parse_mountinfo

CONTROLLERS = ("memory", "pids", "cpu", "freezer")
UNLIMITED = -1  # pass as a limit to remove it
CPU_PERIOD_US = 100_000
_V1_UNLIMITED = 1 << 62  # v1 shows "no memory limit" as ~2**63 rounded to pages


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    mountpoint: str
    controllers: frozenset[str]  # those of CONTROLLERS it can serve


def hierarchies(mountinfo: bytes | None = None) -> list[Hierarchy]:
    """The cgroup hierarchies mounted in our mount namespace that a VE uses."""
    mounts = own_mounts() if mountinfo is None else parse_mountinfo(mountinfo)
    found: list[Hierarchy] = []
    seen: set[tuple[int, int]] = set()
    for m in mounts:
        if m.dev in seen or m.fstype not in ("cgroup", "cgroup2"):
            continue
        if m.fstype == "cgroup":
            ours = frozenset(m.super_options.split(",")) & frozenset(CONTROLLERS)
            if ours:
                seen.add(m.dev)
                found.append(Hierarchy(1, m.mountpoint, ours))
        elif not any(h.version == 2 for h in found):
            seen.add(m.dev)
            try:
                available = _read(os.path.join(m.mountpoint, "cgroup.controllers")).split()
            except OSError:
                continue
            # the v2 freezer is core cgroup2, never listed as a controller
            ours = (frozenset(available) & frozenset(CONTROLLERS)) | {"freezer"}
            found.append(Hierarchy(2, m.mountpoint, ours))
    return found


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise SyscallFailed(f"write {value!r} to {path}", e.errno or errno.EIO) from None


def _wait(
    done: Callable[[], bool], timeout: float, retry: Callable[[], None] | None = None
) -> bool:
    """Poll `done` with a growing pause; `retry` nudges the kernel now and then."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
        if retry is not None and pause == 0.05:
            retry()
    return True


class VeCgroups:
    """The cgroups of VE `veid`. Constructing touches nothing; `create` makes them."""

    def __init__(
        self,
        veid: int,
        *,
        parent: str = "vzcpt",
        freezer: str = "auto",
        layout: list[Hierarchy] | None = None,
    ) -> None:
        if veid < 0:
            raise VzcptError(f"bad VEID {veid}: must be a non-negative number")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", parent) or ".." in parent:
            raise VzcptError(f"bad cgroup parent {parent!r}: a relative path without '..'")
        self.veid = veid
        self.parent = parent
        self.layout = hierarchies() if layout is None else layout
        if not self.layout:
            raise Unsupported("no cgroup hierarchy is mounted (see /proc/self/mountinfo)")
        v2 = [h for h in self.layout if h.version == 2]
        v1_freezer = [h for h in self.layout if h.version == 1 and "freezer" in h.controllers]
        if freezer == "auto":
            freezer = "v2" if v2 else "v1"
        if freezer not in ("v1", "v2") or not (v2 if freezer == "v2" else v1_freezer):
            raise Unsupported(f"freezer {freezer!r}: no such cgroup hierarchy is mounted")
        self.freezer_version = int(freezer[1])

    def _dir(self, h: Hierarchy) -> str:
        return os.path.join(h.mountpoint, self.parent, str(self.veid))

    def paths(self) -> list[str]:
        """The VE's cgroup directory in each hierarchy."""
        return [self._dir(h) for h in self.layout]

    def _holder(self, controller: str) -> Hierarchy | None:
        """The hierarchy serving `controller` (v1 first, see the module doc)."""
        if controller == "freezer":
            return next(
                h
                for h in self.layout
                if h.version == self.freezer_version and "freezer" in h.controllers
            )
        for version in (1, 2):
            for h in self.layout:
                if h.version == version and controller in h.controllers:
                    return h
        return None

    def _file(self, controller: str, name: str) -> str:
        h = self._holder(controller)
        if h is None:
            raise Unsupported(f"the {controller} cgroup controller is not available on this host")
        return os.path.join(self._dir(h), name)

    def exists(self) -> bool:
        return any(os.path.isdir(p) for p in self.paths())

    def create(self) -> VeCgroups:
        """Make the VE's cgroups (idempotent); returns self."""
        for h in self.layout:
            if h.version == 2:
                self._enable_v2(h)
            os.makedirs(self._dir(h), exist_ok=True)
        return self

    def _enable_v2(self, h: Hierarchy) -> None:
        """Let the VE's v2 cgroup use the v2 controllers: every ancestor enables them."""
        wanted = sorted(h.controllers - {"freezer"})
        node = h.mountpoint
        for part in [""] + self.parent.split("/"):
            node = os.path.join(node, part) if part else node
            os.makedirs(node, exist_ok=True)
            have = _read(os.path.join(node, "cgroup.subtree_control")).split()
            missing = [c for c in wanted if c not in have]
            if not missing:
                continue
            try:
                _write(
                    os.path.join(node, "cgroup.subtree_control"), " ".join(f"+{c}" for c in missing)
                )
            except SyscallFailed as e:
                if e.errno != errno.EBUSY:
                    raise
                raise VzcptError(
                    f"cannot enable {' '.join(missing)} for VE cgroups under {node}: it holds "
                    "processes (cgroup v2 allows controllers only for cgroups without); "
                    "choose another cgroup parent"
                ) from None

    def _missing(self) -> VzcptError:
        return VzcptError(f"VE {self.veid} has no cgroup ({self.paths()[0]}): not created")

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the VE's cgroups."""
        for path in self.paths():
            try:
                with open(os.path.join(path, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except FileNotFoundError:
                raise self._missing() from None
            except ProcessLookupError:
                raise ProcessGone(
                    f"process {pid} is gone (moving it into VE {self.veid})"
                ) from None
            except OSError as e:
                raise SyscallFailed(
                    f"move process {pid} into {path}", e.errno or errno.EIO
                ) from None

    def pids(self) -> list[int]:
        """Every process in the VE's cgroups, in any hierarchy."""
        found: set[int] = set()
        for path in self.paths():
            try:
                found.update(int(x) for x in _read(os.path.join(path, "cgroup.procs")).split())
            except FileNotFoundError:
                continue
        return sorted(found)

    # -- limits -----------------------------------------------------------------------

    def set_limits(
        self,
        ram_bytes: int | None = None,
        swap_bytes: int | None = None,
        cpus: float | None = None,
        numproc: int | None = None,
    ) -> None:
        """Set the limits given (None: leave as is; UNLIMITED: remove the limit).

        `swap_bytes` is the swap allowed on top of RAM, as OpenVZ's SWAPPAGES.
        """
        for name, value in (
            ("ram", ram_bytes),
            ("swap", swap_bytes),
            ("cpus", cpus),
            ("numproc", numproc),
        ):
            if value is not None and value != UNLIMITED and value <= 0:
                raise VzcptError(f"bad {name} limit {value}: must be positive")
        if not self.exists():
            raise self._missing()
        if ram_bytes is not None or swap_bytes is not None:
            self._set_memory(ram_bytes, swap_bytes)
        if numproc is not None:
            _write(self._file("pids", "pids.max"), "max" if numproc == UNLIMITED else str(numproc))
        if cpus is not None:
            self._set_cpus(cpus)

    def apply_limits(self, limits: dict[str, float | None]) -> None:
        """Set limits as `read_limits` gave them (None: unlimited), e.g. those a
        checkpointed VE had. A limit whose controller this host lacks is left out,
        and so is an unlimited swap without swap accounting (nothing to remove)."""
        mem = self._holder("memory")
        swap_name = "memory.swap.max" if mem and mem.version == 2 else "memory.memsw.limit_in_bytes"
        swap_file = mem is not None and os.path.exists(self._file("memory", swap_name))

        def value(name: str, controller: str) -> float | None:
            if name not in limits or self._holder(controller) is None:
                return None
            given = limits[name]
            return UNLIMITED if given is None else given

        ram = value("ram_bytes", "memory")
        swap = value("swap_bytes", "memory") if swap_file else None
        if swap is None and limits.get("swap_bytes") is not None:
            raise Unsupported("the VE had a swap limit, and this host has no swap accounting")
        cpus = value("cpus", "cpu")
        numproc = value("numproc", "pids")
        self.set_limits(
            ram_bytes=None if ram is None else int(ram),
            swap_bytes=None if swap is None else int(swap),
            cpus=cpus,
            numproc=None if numproc is None else int(numproc),
        )

    def _set_memory(self, ram: int | None, swap: int | None) -> None:
        h = self._holder("memory")
        if h is not None and h.version == 2:
            if ram is not None:
                _write(self._file("memory", "memory.max"), "max" if ram == UNLIMITED else str(ram))
            if swap is not None:
                path = self._file("memory", "memory.swap.max")
                if not os.path.exists(path):
                    raise Unsupported("swap limits need swap accounting (no memory.swap.max)")
                _write(path, "max" if swap == UNLIMITED else str(swap))
            return
        # v1 knows RAM and RAM+swap (memsw); the two must keep limit <= memsw
        limit = self._file("memory", "memory.limit_in_bytes")
        memsw = self._file("memory", "memory.memsw.limit_in_bytes")
        old = self.read_limits()
        new_ram = old["ram_bytes"] if ram is None else (None if ram == UNLIMITED else ram)
        new_swap = old["swap_bytes"] if swap is None else (None if swap == UNLIMITED else swap)
        if not os.path.exists(memsw):
            if swap is not None:
                raise Unsupported("swap limits need swap accounting (swapaccount=1)")
            _write(limit, str(-1 if new_ram is None else int(new_ram)))
            return
        total = None if new_ram is None or new_swap is None else int(new_ram + new_swap)
        cur_ram = int(_read(limit))
        writes = [(limit, -1 if new_ram is None else int(new_ram)), (memsw, total or -1)]
        if total is None or total >= cur_ram:
            writes.reverse()  # raising memsw first keeps limit <= memsw throughout
        for path, value in writes:
            _write(path, str(value))

    def _set_cpus(self, cpus: float) -> None:
        h = self._holder("cpu")
        quota = -1 if cpus == UNLIMITED else max(1000, round(cpus * CPU_PERIOD_US))
        if h is not None and h.version == 2:
            _write(self._file("cpu", "cpu.max"), f"{'max' if quota < 0 else quota} {CPU_PERIOD_US}")
            return
        _write(self._file("cpu", "cpu.cfs_period_us"), str(CPU_PERIOD_US))
        _write(self._file("cpu", "cpu.cfs_quota_us"), str(quota))

    def read_limits(self) -> dict[str, float | None]:
        """{"ram_bytes", "swap_bytes", "cpus", "numproc"}: None is unlimited.

        Limits whose controller the host lacks read as None too.
        """
        if not self.exists():
            raise self._missing()
        out: dict[str, float | None] = {}
        mem = self._holder("memory")
        if mem is None:
            out["ram_bytes"] = out["swap_bytes"] = None
        elif mem.version == 2:
            out["ram_bytes"] = _v2_value(self._file("memory", "memory.max"))
            out["swap_bytes"] = _v2_value(self._file("memory", "memory.swap.max"))
        else:
            ram = _v1_value(self._file("memory", "memory.limit_in_bytes"))
            memsw = self._file("memory", "memory.memsw.limit_in_bytes")
            total = _v1_value(memsw) if os.path.exists(memsw) else None
            out["ram_bytes"] = ram
            out["swap_bytes"] = None if ram is None or total is None else total - ram
        out["numproc"] = _v2_value(self._file("pids", "pids.max")) if self._holder("pids") else None
        cpu = self._holder("cpu")
        if cpu is None:
            out["cpus"] = None
        elif cpu.version == 2:
            quota, period = _read(self._file("cpu", "cpu.max")).split()
            out["cpus"] = None if quota == "max" else int(quota) / int(period)
        else:
            quota_us = int(_read(self._file("cpu", "cpu.cfs_quota_us")))
            period_us = int(_read(self._file("cpu", "cpu.cfs_period_us")))
            out["cpus"] = None if quota_us < 0 else quota_us / period_us
        return out

    # -- freezing ---------------------------------------------------------------------

    def frozen(self) -> bool:
        """True once every process of the VE is frozen."""
        try:
            if self.freezer_version == 2:
                return "frozen 1" in _read(self._file("freezer", "cgroup.events")).splitlines()
            return _read(self._file("freezer", "freezer.state")).strip() == "FROZEN"
        except FileNotFoundError:
            raise self._missing() from None

    def _request(self, freeze: bool) -> None:
        if self.freezer_version == 2:
            _write(self._file("freezer", "cgroup.freeze"), "1" if freeze else "0")
        else:
            _write(self._file("freezer", "freezer.state"), "FROZEN" if freeze else "THAWED")

    def freeze(self, timeout: float = 10.0) -> None:
        """Freeze every process of the VE; returns once they all are frozen.

        On timeout the VE is thawed again and VzcptError raised.
        """
        if not self.exists():
            raise self._missing()
        self._request(True)
        # v1 may stay FREEZING while a task sleeps uninterruptibly: asking again retries
        if not _wait(self.frozen, timeout, lambda: self._request(True)):
            self._request(False)
            raise VzcptError(
                f"VE {self.veid}: processes did not freeze within {timeout:g}s "
                "(a task in uninterruptible sleep, e.g. on NFS or a vfork?); it was thawed"
            )

    def thaw(self, timeout: float = 10.0) -> None:
        """Let the VE's processes run again; returns once the freezer says so."""
        if not self.exists():
            raise self._missing()
        self._request(False)
        if not _wait(lambda: not self.frozen(), timeout):
            raise VzcptError(f"VE {self.veid}: the cgroup freezer did not thaw in {timeout:g}s")

    # -- removal ----------------------------------------------------------------------

    def destroy(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Remove the VE's cgroups (idempotent).

        Refuses while processes remain, unless `kill`: then SIGKILL them all
        (repeatedly, so a fork in the meantime does not escape), thaw the
        freezer so frozen ones can die, and wait until the cgroups are empty.
        """
        if not self.exists():
            return
        left = self.pids()
        if left and not kill:
            raise VzcptError(
                f"VE {self.veid}: processes {left[:10]} are still in its cgroups; "
                "stop the VE first (or destroy with kill)"
            )
        if kill:
            self._kill_all(timeout)
        for path in self.paths():
            # the last task may still be leaving the css_set: retry EBUSY briefly
            def gone(path: str = path) -> bool:
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    return True
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise SyscallFailed(f"remove cgroup {path}", e.errno or errno.EIO) from None
                    return False
                return True

            if not _wait(gone, timeout):
                raise VzcptError(f"VE {self.veid}: cgroup {path} stays busy")

    def _kill_all(self, timeout: float) -> None:
        if os.getpid() in self.pids():
            raise VzcptError(f"VE {self.veid}: refusing to kill its cgroups: we are inside")

        def empty() -> bool:
            pids = self.pids()
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if pids:
                with suppress(SyscallFailed):
                    self._request(False)  # v1 frozen tasks die only once thawed
            return not pids

        if not _wait(empty, timeout):
            raise VzcptError(f"VE {self.veid}: processes {self.pids()[:10]} survive SIGKILL")

    def remove_parent(self) -> None:
        """Remove the `parent` directories if no VE uses them any more."""
        for h in self.layout:
            parts = self.parent.split("/")
            while parts:
                path = os.path.join(h.mountpoint, *parts)
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EBUSY):
                        break
                    raise SyscallFailed(f"remove cgroup {path}", e.errno or errno.EIO) from None
                parts.pop()


def _v1_value(path: str) -> int | None:
    value = int(_read(path))
    return None if value < 0 or value >= _V1_UNLIMITED else value


def _v2_value(path: str) -> int | None:
    try:
        text = _read(path).strip()
    except FileNotFoundError:
        return None
    return None if text == "max" else int(text)
