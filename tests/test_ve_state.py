"""The VE state machine, its record on disk, and the per-VE lock across processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vzcpt.errors import VzcptError
from vzcpt.ve.paths import Paths
from vzcpt.ve.state import (
    TRANSITIONS,
    IllegalTransition,
    StateRecord,
    VeLock,
    VeLocked,
    VeState,
    check_transition,
    commit_transition,
    load_state,
    save_state,
)

A, S, R = VeState.ABSENT, VeState.STOPPED, VeState.RUNNING
SU, D, RF = VeState.SUSPENDED, VeState.DUMPED, VeState.RESTORED_FROZEN

# The state machine as the issue and OpenVZ define it, written out independently
# of the module so that a change to TRANSITIONS has to be a change to this too.
EXPECTED = {
    "create": {A: S},
    "destroy": {S: A},
    "start": {S: R},
    "stop": {R: S, SU: S, D: S, RF: S},
    "restart": {R: R, S: R},
    "chkpnt": {R: S},
    "suspend": {R: SU},
    "dump": {SU: D, D: D},
    "kill": {D: S},
    "resume": {SU: R, D: R, RF: R},
    "restore": {S: R},
    "undump": {S: RF},
    "restore-kill": {RF: S},
    "exec": {R: R},
    "enter": {R: R},
    "set": {S: S, R: R},
}


def test_transition_table() -> None:
    assert TRANSITIONS == EXPECTED


LEGAL = [(op, src, dst) for op, moves in EXPECTED.items() for src, dst in moves.items()]
ILLEGAL = [(op, s) for op, moves in EXPECTED.items() for s in VeState if s not in moves]


@pytest.mark.parametrize(("op", "src", "dst"), LEGAL)
def test_legal_transition(op: str, src: VeState, dst: VeState) -> None:
    assert check_transition(op, src, 101) is dst


@pytest.mark.parametrize(("op", "state"), ILLEGAL)
def test_illegal_transition(op: str, state: VeState) -> None:
    with pytest.raises(IllegalTransition) as ei:
        check_transition(op, state, 101)
    msg = str(ei.value)
    assert msg.startswith(f"cannot {op} VE 101: ")
    assert f"({op} needs " in msg
    assert "\n" not in msg
    assert isinstance(ei.value, VzcptError)
    assert (ei.value.op, ei.value.current, ei.value.veid) == (op, state, 101)


@pytest.mark.parametrize(
    ("op", "state", "message"),
    [
        (
            "resume",
            R,
            "cannot resume VE 101: it is running"
            " (resume needs a suspended, dumped or restored-frozen VE)",
        ),
        ("dump", R, "cannot dump VE 101: it is running (dump needs a suspended or dumped VE)"),
        ("kill", SU, "cannot kill VE 101: it is suspended (kill needs a dumped VE)"),
        ("start", A, "cannot start VE 101: it does not exist (start needs a stopped VE)"),
        ("destroy", R, "cannot destroy VE 101: it is running (destroy needs a stopped VE)"),
        (
            "create",
            S,
            "cannot create VE 101: it already exists (stopped) (create needs a VEID not in use)",
        ),
        (
            "restore",
            D,
            "cannot restore VE 101: it is suspended and dumped (restore needs a stopped VE)",
        ),
        (
            "undump",
            RF,
            "cannot undump VE 101: it is restored and frozen (undump needs a stopped VE)",
        ),
        (
            "restore-kill",
            S,
            "cannot restore-kill VE 101: it is stopped (restore-kill needs a restored-frozen VE)",
        ),
        ("exec", SU, "cannot exec VE 101: it is suspended (exec needs a running VE)"),
    ],
)
def test_illegal_transition_messages(op: str, state: VeState, message: str) -> None:
    with pytest.raises(IllegalTransition) as ei:
        check_transition(op, state, 101)
    assert str(ei.value) == message


def test_illegal_transition_exit_codes() -> None:
    def code(op: str, state: VeState) -> int:
        with pytest.raises(IllegalTransition) as ei:
            check_transition(op, state, 101)
        return ei.value.exit_code

    assert code("start", R) == 32  # OpenVZ: container already running
    assert code("exec", S) == 31  # OpenVZ: container not running
    assert code("stop", S) == 31
    assert code("kill", SU) == 1


def test_unknown_operation_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown VE operation"):
        check_transition("frobnicate", R, 101)


def test_message_without_veid() -> None:
    with pytest.raises(IllegalTransition, match="^cannot start the VE: it is running"):
        check_transition("start", R)


# --- the record on disk -------------------------------------------------------------


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setenv("VZCPT_ROOT", str(tmp_path))
    p = Paths.from_env()
    assert p.root == str(tmp_path)
    return p


def test_no_record_means_absent_or_stopped(paths: Paths) -> None:
    assert load_state(paths, 101) == StateRecord(101, A)
    paths.private(101).mkdir(parents=True)  # e.g. copied from another host
    assert load_state(paths, 101).state is S
    # a VE_PRIVATE set in its config is the one that counts
    paths.ve_conf(102).parent.mkdir(parents=True, exist_ok=True)
    paths.ve_conf(102).write_text('VE_PRIVATE="/elsewhere/$VEID"\n')
    assert load_state(paths, 102).state is A
    (Path(paths.root) / "elsewhere/102").mkdir(parents=True)
    assert load_state(paths, 102).state is S


def test_record_round_trip(paths: Paths) -> None:
    rec = StateRecord(
        101, D, init_pid=4242, dumpfile="/vz/dump/Dump.101", extra={"cgroup": "/vzcpt/101"}
    )
    before = time.time()
    save_state(paths, rec)
    assert rec.updated >= before
    path = paths.state_file(101)
    assert str(path).startswith(paths.root + "/var/lib/vzcpt/")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["state"] == "dumped"
    assert load_state(paths, 101) == rec
    assert os.listdir(path.parent) == ["101.state"]  # written by rename, no leftovers


def test_full_staged_cycle_persists(paths: Paths) -> None:
    rec = load_state(paths, 101)
    for op, state in [
        ("create", S),
        ("start", R),
        ("suspend", SU),
        ("dump", D),
        ("kill", S),
        ("undump", RF),
        ("resume", R),
        ("chkpnt", S),
        ("restore", R),
        ("stop", S),
    ]:
        if state is R:
            rec.init_pid = 1234  # the runtime records its init before committing
        rec = commit_transition(paths, rec, op)
        assert rec.state is state
        assert load_state(paths, 101) == rec
        if state is S:
            assert rec.init_pid is None  # no processes, no init
    with pytest.raises(IllegalTransition):
        commit_transition(paths, rec, "resume")
    assert load_state(paths, 101).state is S  # a refused operation changes nothing
    rec = commit_transition(paths, rec, "destroy")
    assert rec.state is A
    assert not paths.state_file(101).exists()
    assert load_state(paths, 101).state is A


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "Expecting property name"),
        ("[]", "not a version 1 state record"),
        ('{"version": 1, "veid": 102, "state": "running"}', "record of VE 102"),
        ('{"version": 1, "veid": 101, "state": "flying", "updated": 0}', "'flying'"),
        ('{"version": 1, "veid": 101, "state": "running", "init_pid": -3}', "bad init_pid"),
        ('{"version": 1, "veid": 101, "state": "running", "updated": "x"}', "bad updated"),
        (
            '{"version": 1, "veid": 101, "state": "running", "updated": 1, "extra": {"a": 1}}',
            "extra",
        ),
    ],
)
def test_corrupt_record(paths: Paths, content: str, why: str) -> None:
    path = paths.state_file(101)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(VzcptError) as ei:
        load_state(paths, 101)
    msg = str(ei.value)
    assert msg.startswith(f"state file {path} of VE 101 is corrupt (")
    assert why in msg
    assert "\n" not in msg


# --- the lock -----------------------------------------------------------------------

HOLDER = """
import os, sys, time
from vzcpt.ve.paths import Paths
from vzcpt.ve.state import VeLock

veid, hold = int(sys.argv[1]), float(sys.argv[2])
with VeLock(Paths.from_env(), veid):
    if hold == -2:  # fork a child, then die holding the lock
        if os.fork() == 0:
            # fork() has returned here, so the at-fork handlers have run
            print(os.getpid(), flush=True)
            time.sleep(120)
            os._exit(0)
        os._exit(0)
    print("held", flush=True)
    if hold < 0:
        sys.stdin.read()  # until the test closes our stdin
    else:
        time.sleep(hold)
"""


@pytest.fixture
def holder(paths: Paths, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a process that takes a VE's lock; every one is killed at the end."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, VZCPT_ROOT=paths.root)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    procs: list[subprocess.Popen[str]] = []

    def start(veid: int = 101, hold: float = -1) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(veid), str(hold)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()


def _wait_held(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n", "the holder failed to take the lock"


def test_lock_held_by_another_process(
    paths: Paths, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = holder(101)
    _wait_held(proc)
    with pytest.raises(VeLocked) as ei:
        VeLock(paths, 101).acquire()
    assert ei.value.pid == proc.pid
    assert str(ei.value) == (
        f"VE 101 is locked by another vzctl (pid {proc.pid}): try again when it finishes"
    )
    assert ei.value.exit_code == 9  # OpenVZ's code for a locked container
    with VeLock(paths, 102) as other:  # another VE is not affected
        assert other.held


def test_lock_released_when_holder_dies(
    paths: Paths, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = holder(101)
    _wait_held(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert paths.lock_file(101).exists()  # the stale file stays, and is harmless
    with VeLock(paths, 101) as lock:
        assert lock.held
        assert paths.lock_file(101).read_text() == f"{os.getpid()}\n"
    assert paths.lock_file(101).read_text() == ""


def test_lock_released_on_normal_exit(
    paths: Paths, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = holder(101)
    _wait_held(proc)
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait()
    with VeLock(paths, 101):
        pass


def test_lock_waits_up_to_timeout(
    paths: Paths, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = holder(101, hold=0.5)
    _wait_held(proc)
    with VeLock(paths, 101, timeout=60) as lock:  # waits for the holder to finish
        assert lock.held
    assert proc.wait(timeout=60) == 0  # it slept its 0.5 s and let go, not killed


def test_lock_timeout_expires(paths: Paths, holder: Callable[..., subprocess.Popen[str]]) -> None:
    proc = holder(101)
    _wait_held(proc)
    start = time.monotonic()
    with pytest.raises(VeLocked) as ei:
        VeLock(paths, 101, timeout=0.3).acquire()
    assert time.monotonic() - start >= 0.3
    assert ei.value.pid == proc.pid


def test_lock_not_kept_by_forked_children(
    paths: Paths, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    # A VE's init forked while vzctl holds the lock must not keep it for the
    # VE's whole life: the holder forks a long-lived child, then dies.
    proc = holder(101, hold=-2)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    try:
        proc.wait()
        os.kill(child, 0)  # the child is still alive...
        with VeLock(paths, 101) as lock:  # ...and does not hold the lock
            assert lock.held
    finally:
        os.kill(child, signal.SIGKILL)


def test_lock_in_process(paths: Paths) -> None:
    lock = VeLock(paths, 101)
    with lock:
        assert lock.held
        assert stat.S_IMODE(paths.lock_file(101).stat().st_mode) == 0o644
        with pytest.raises(RuntimeError, match="acquired twice"):
            lock.acquire()
        with pytest.raises(RuntimeError, match="already locked by this process"):
            VeLock(paths, 101).acquire()
    assert not lock.held
    lock.release()  # releasing twice is harmless
    with VeLock(paths, 101):
        pass
