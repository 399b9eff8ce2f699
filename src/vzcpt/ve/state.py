"""The VE state machine, recorded on disk, and the lock that serializes vzctl commands.

Every vzctl command on a VE runs as: take the VE's lock, read its state record,
`check_transition` (refuse an illegal operation before touching anything), do the
work, write the new state, release the lock. The record is a small JSON file in
/var/lib/vzcpt (under VZCPT_ROOT), written atomically, so a crash leaves the old
state or the new one — never half of each.

The states (OpenVZ's, with the checkpoint stages made explicit):

    ABSENT           no VE with this VEID
    STOPPED          private area exists, no processes
    RUNNING          processes running
    SUSPENDED        `chkpnt --suspend`: every process frozen, network locked
    DUMPED           suspended and its dump file written: may be killed or resumed
    RESTORED_FROZEN  `restore --undump`: everything rebuilt, processes still frozen

`TRANSITIONS` lists every operation and, for each state it is legal in, the state
it leads to. Decisions worth knowing:

- `kill` (chkpnt --kill) is legal only once DUMPED: the only copy of a VE is never
  killed by the checkpoint path before its dump is complete (DESIGN.md).
- `stop` is legal in every state with processes, frozen or not: it is the
  operator's explicit "discard them", as on a running VE, and like OpenVZ's
  vzctl stop (which acts on any VE the kernel has, ending with a kill). Stopping
  a SUSPENDED VE without resuming it first also means it never runs again — no
  packet leaves it between its network lock and its death.
- `dump` is legal again once DUMPED (to write a second copy, say after a
  transfer failed); it leaves the VE DUMPED.
- `restart` starts a stopped VE, as vzctl's does; it refuses frozen states.
- `set`, `exec` and `enter` do not change the state but are refused where they
  make no sense (a config change under a frozen VE would not match its dump).
- OpenVZ's vzctl exits 0 for "stop" on a stopped VE; here it is an
  IllegalTransition (exit code 31, "not running"); a caller wanting OpenVZ's
  leniency catches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import json
import os
import time
import weakref
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from vzcpt.errors import VzcptError
from vzcpt.ve.config import load_ve
from vzcpt.ve.paths import Paths, atomic_write, check_veid


class VeState(enum.Enum):
    ABSENT = "absent"
    STOPPED = "stopped"
    RUNNING = "running"
    SUSPENDED = "suspended"
    DUMPED = "dumped"
    RESTORED_FROZEN = "restored-frozen"

    @property
    def has_processes(self) -> bool:
        return self not in (VeState.ABSENT, VeState.STOPPED)

    @property
    def frozen(self) -> bool:
        return self in (VeState.SUSPENDED, VeState.DUMPED, VeState.RESTORED_FROZEN)


_A, _S, _R = VeState.ABSENT, VeState.STOPPED, VeState.RUNNING
_SU, _D, _RF = VeState.SUSPENDED, VeState.DUMPED, VeState.RESTORED_FROZEN

TRANSITIONS: dict[str, dict[VeState, VeState]] = {
    "create": {_A: _S},
    "destroy": {_S: _A},
    "start": {_S: _R},
    "stop": {_R: _S, _SU: _S, _D: _S, _RF: _S},
    "restart": {_R: _R, _S: _R},
    # chkpnt VEID (suspend + dump + kill in one command) and its stages
    "chkpnt": {_R: _S},
    "suspend": {_R: _SU},
    "dump": {_SU: _D, _D: _D},
    "kill": {_D: _S},
    "resume": {_SU: _R, _D: _R, _RF: _R},
    # restore VEID (undump + resume in one command) and its stages
    "restore": {_S: _R},
    "undump": {_S: _RF},
    "restore-kill": {_RF: _S},
    # no state change, but only where they make sense
    "exec": {_R: _R},
    "enter": {_R: _R},
    "set": {_S: _S, _R: _R},
}

_DESCRIBE = {
    _A: "it does not exist",
    _S: "it is stopped",
    _R: "it is running",
    _SU: "it is suspended",
    _D: "it is suspended and dumped",
    _RF: "it is restored and frozen",
}


class IllegalTransition(VzcptError):
    """The operation is not legal in the VE's present state."""

    def __init__(self, op: str, current: VeState, veid: int | None = None) -> None:
        self.op, self.current, self.veid = op, current, veid
        legal = TRANSITIONS[op]
        who = f"VE {veid}" if veid is not None else "the VE"
        if set(legal) == {_A}:
            why, needs = f"it already exists ({current.value})", "a VEID not in use"
        else:
            names = [s.value for s in VeState if s in legal]
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
            why, needs = _DESCRIBE[current], f"a {listed} VE"
        super().__init__(f"cannot {op} {who}: {why} ({op} needs {needs})")
        # OpenVZ's exit codes: 32 "already running", 31 "not running".
        if current is _R:
            self.exit_code = 32
        elif _R in legal and not current.has_processes:
            self.exit_code = 31


def check_transition(op: str, current: VeState, veid: int | None = None) -> VeState:
    """The state `op` leads to from `current`; IllegalTransition if not allowed."""
    if op not in TRANSITIONS:
        raise ValueError(f"unknown VE operation {op!r}")  # a bug, not a user error
    new = TRANSITIONS[op].get(current)
    if new is None:
        raise IllegalTransition(op, current, veid)
    return new


# --- the state record ---------------------------------------------------------------

_VERSION = 1


@dataclass
class StateRecord:
    """What vzcpt knows about a VE between commands."""

    veid: int
    state: VeState
    init_pid: int | None = None  # host pid of the VE's init, while it has processes
    dumpfile: str | None = None  # the last dump written or restored
    updated: float = 0.0  # time.time() of the last save
    extra: dict[str, str] = field(default_factory=dict)  # the runtime's own notes

    def to_json(self) -> bytes:
        doc = {
            "version": _VERSION,
            "veid": self.veid,
            "state": self.state.value,
            "init_pid": self.init_pid,
            "dumpfile": self.dumpfile,
            "updated": self.updated,
            "extra": self.extra,
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, veid: int) -> StateRecord:
        """Parse and check a record; ValueError says what is wrong."""
        doc: Any = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            raise ValueError(f"not a version {_VERSION} state record")
        if doc.get("veid") != veid:
            raise ValueError(f"it is the record of VE {doc.get('veid')!r}")
        pid, dumpfile, updated, extra = (
            doc.get("init_pid"),
            doc.get("dumpfile"),
            doc.get("updated"),
            doc.get("extra", {}),
        )
        if pid is not None and (type(pid) is not int or pid < 1):
            raise ValueError(f"bad init_pid {pid!r}")
        if dumpfile is not None and not isinstance(dumpfile, str):
            raise ValueError(f"bad dumpfile {dumpfile!r}")
        if not isinstance(updated, int | float) or isinstance(updated, bool):
            raise ValueError(f"bad updated time {updated!r}")
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            raise ValueError("extra is not a map of strings")
        return cls(veid, VeState(doc.get("state")), pid, dumpfile, float(updated), dict(extra))


def _exists_without_record(paths: Paths, veid: int) -> bool:
    # A VE whose private area is there but has no record (copied from another host
    # for a restore, or a create interrupted before its first save) is stopped:
    # OpenVZ too calls a VE existing when its private area exists.
    return load_ve(paths, veid, missing_ok=True).ve_private(veid, paths).is_dir()


def load_state(paths: Paths, veid: int) -> StateRecord:
    """The VE's record; without one, STOPPED if its private area exists, else ABSENT."""
    path = paths.state_file(check_veid(veid))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        state = _S if _exists_without_record(paths, veid) else _A
        return StateRecord(veid, state)
    except OSError as e:
        raise VzcptError(f"cannot read the state of VE {veid} ({path}): {e.strerror}") from None
    try:
        return StateRecord.from_json(data, veid)
    except ValueError as e:  # JSONDecodeError and bad enum values are ValueErrors too
        raise VzcptError(
            f"state file {path} of VE {veid} is corrupt ({e}): if no vzctl is working on"
            " the VE, check its processes and remove the file"
        ) from None


def save_state(paths: Paths, rec: StateRecord) -> None:
    """Record `rec` atomically, stamping rec.updated; ABSENT removes the record."""
    path = paths.state_file(check_veid(rec.veid))
    rec.updated = time.time()
    try:
        if rec.state is _A:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, rec.to_json(), 0o644)
    except OSError as e:
        raise VzcptError(f"cannot save the state of VE {rec.veid} ({path}): {e.strerror}") from None


def commit_transition(paths: Paths, rec: StateRecord, op: str) -> StateRecord:
    """Check `op` from rec's state, save and return the record in the new state.

    Call it once the operation's work is done (set init_pid/dumpfile beforehand with
    dataclasses.replace); the pid of init is dropped when the VE loses its processes.
    """
    new = check_transition(op, rec.state, rec.veid)
    out = dataclasses.replace(rec, state=new, extra=dict(rec.extra))
    if not new.has_processes:
        out.init_pid = None
    save_state(paths, out)
    return out


# --- the lock -----------------------------------------------------------------------


class VeLocked(VzcptError):
    """Another vzctl holds the VE's lock."""

    exit_code = 9  # OpenVZ's "container is locked by another vzctl invocation"

    def __init__(self, veid: int, pid: int | None) -> None:
        self.veid, self.pid = veid, pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"VE {veid} is locked by another vzctl ({holder}): try again when it finishes"
        )


_LIVE: weakref.WeakSet[VeLock] = weakref.WeakSet()


def close_inherited_locks() -> None:
    """In a forked child: drop the VE locks inherited from the parent, without unlocking.

    flock belongs to the open file, shared across fork: a VE's init forked while the
    parent holds the lock would hold it for the VE's whole life. os.fork() calls this
    by itself; a child made by a raw clone() must call it.
    """
    for lock in list(_LIVE):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)  # close, never LOCK_UN: that would unlock the parent
            lock._fd = None
    _LIVE.clear()


os.register_at_fork(after_in_child=close_inherited_locks)


class VeLock:
    """An exclusive per-VE lock (flock on /var/lock/vzcpt/VEID.lck) across processes.

    `timeout` 0 fails at once, as OpenVZ does; otherwise wait up to that many seconds.
    The file holds the holder's pid, for the message. It is never removed: a file
    left by a dead holder is unlocked (the kernel drops flocks with their last fd),
    and removing it would let two processes lock two different files.
    """

    def __init__(self, paths: Paths, veid: int, timeout: float = 0.0) -> None:
        self.veid = check_veid(veid)
        self.path = paths.lock_file(veid)
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"VeLock of VE {self.veid} acquired twice")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise VzcptError(
                f"cannot open the lock {self.path} of VE {self.veid}: {e.strerror}"
            ) from None
        try:
            self._wait(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _LIVE.add(self)

    def _wait(self, fd: int) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    pid = _holder(fd)
                    if pid == os.getpid():
                        raise RuntimeError(
                            f"VE {self.veid} is already locked by this process"
                        ) from None
                    raise VeLocked(self.veid, pid) from None
                # Polling, not a blocking flock: a blocking one cannot time out
                # without a signal, and a lock is held for seconds at most.
                time.sleep(min(0.05, left))

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _LIVE.discard(self)
        try:
            os.ftruncate(fd, 0)  # no stale pid for the next reader
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> VeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    """The pid the holder wrote, if it has written it yet."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
