"""The VE's cgroups on the real kernel: limits, pids.max, freezing, removal.

Every test uses its own parent directory (pid + uuid), so parallel runs and
real VEs never meet; the fixture kills what is left and removes it all.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial

import pytest

from vzcpt.errors import VzcptError
from vzcpt.ve.cgroups import UNLIMITED, VeCgroups, hierarchies

MiB = 1 << 20
VEID = 101

COUNTER = """
import sys, time
i = 0
while True:
    i += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(i))
    import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.005)
"""

FORKER = """
import os, signal, sys
sys.stdin.readline()
kids, failed = [], 0
for _ in range(5):
    try:
        pid = os.fork()
    except BlockingIOError:
        failed += 1
        continue
    if pid == 0:
        signal.pause()
        os._exit(0)
    kids.append(pid)
print(len(kids), failed, flush=True)
for pid in kids:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


class Made:
    """Cgroups and processes a test made, all removed at the end."""

    def __init__(self) -> None:
        self.parent = f"vzcpt-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.groups: list[VeCgroups] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def cgroups(self, veid: int = VEID, freezer: str = "auto") -> VeCgroups:
        cg = VeCgroups(veid, parent=self.parent, freezer=freezer).create()
        self.groups.append(cg)
        return cg

    def spawn(self, *argv: str, pipes: bool = False) -> subprocess.Popen[bytes]:
        pipe = subprocess.PIPE if pipes else None
        proc = subprocess.Popen(list(argv), stdin=pipe, stdout=pipe)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        # every step runs even if one fails; the first error is reported
        steps: list[Callable[[], object]] = [partial(cg.destroy, kill=True) for cg in self.groups]
        for proc in self.procs:
            steps += [proc.kill, proc.wait]
        steps += [cg.remove_parent for cg in self.groups]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def made() -> Iterator[Made]:
    m = Made()
    try:
        yield m
    finally:
        m.cleanup()


def _have(version: int, controller: str) -> bool:
    return any(h.version == version and controller in h.controllers for h in hierarchies())


def _freezers() -> list[str]:
    return [v for v in ("v1", "v2") if _have(int(v[1]), "freezer")]


def test_hierarchies_found() -> None:
    found = hierarchies()
    assert found, "no cgroup hierarchy mounted"
    for h in found:
        assert os.path.isdir(h.mountpoint)
        assert h.controllers
    served = set().union(*(h.controllers for h in found))
    assert "freezer" in served


def test_create_add_pids_destroy(made: Made) -> None:
    cg = made.cgroups()
    assert cg.exists()
    for path in cg.paths():
        assert os.path.isdir(path) and path.endswith(f"{made.parent}/{VEID}")
    proc = made.spawn("sleep", "60")
    cg.add(proc.pid)
    assert cg.pids() == [proc.pid]
    with open(f"/proc/{proc.pid}/cgroup") as f:
        mine = f.read()
    assert mine.count(f"/{made.parent}/{VEID}\n") == len(cg.paths())
    with pytest.raises(VzcptError, match="still in its cgroups"):
        cg.destroy()
    assert cg.exists()
    cg.destroy(kill=True)
    assert proc.wait(timeout=10) == -9
    assert not cg.exists()
    cg.destroy()  # idempotent
    cg.remove_parent()
    for h in hierarchies():
        assert not os.path.exists(os.path.join(h.mountpoint, made.parent))


def test_add_gone_process(made: Made) -> None:
    cg = made.cgroups()
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(VzcptError, match="gone"):
        cg.add(proc.pid)


def test_limits_read_back(made: Made) -> None:
    cg = made.cgroups()
    assert cg.read_limits() == {
        "ram_bytes": None,
        "swap_bytes": None,
        "cpus": None,
        "numproc": None,
    }
    cg.set_limits(ram_bytes=64 * MiB, swap_bytes=32 * MiB, cpus=1.5, numproc=50)
    assert cg.read_limits() == {
        "ram_bytes": 64 * MiB,
        "swap_bytes": 32 * MiB,
        "cpus": 1.5,
        "numproc": 50,
    }
    cg.set_limits(ram_bytes=128 * MiB)  # swap stays what it was
    assert cg.read_limits()["swap_bytes"] == 32 * MiB
    cg.set_limits(ram_bytes=16 * MiB)  # lowering: the other order of writes on v1
    assert cg.read_limits()["ram_bytes"] == 16 * MiB
    assert cg.read_limits()["swap_bytes"] == 32 * MiB
    cg.set_limits(ram_bytes=UNLIMITED, swap_bytes=UNLIMITED, cpus=UNLIMITED, numproc=UNLIMITED)
    assert cg.read_limits() == {
        "ram_bytes": None,
        "swap_bytes": None,
        "cpus": None,
        "numproc": None,
    }
    with pytest.raises(VzcptError, match="bad numproc"):
        cg.set_limits(numproc=0)


def test_numproc_enforced(made: Made) -> None:
    cg = made.cgroups()
    cg.set_limits(numproc=3)
    proc = made.spawn(sys.executable, "-c", FORKER, pipes=True)
    cg.add(proc.pid)
    out, _ = proc.communicate(b"go\n", timeout=30)
    assert out.split() == [b"2", b"3"]  # the forker itself is one of the three


def test_ram_enforced(made: Made) -> None:
    cg = made.cgroups()
    cg.set_limits(ram_bytes=32 * MiB, swap_bytes=UNLIMITED)
    if cg.read_limits()["ram_bytes"] != 32 * MiB:
        pytest.skip("no memory controller")
    try:
        cg.set_limits(swap_bytes=1)  # no swap to escape to
    except VzcptError:
        pytest.skip("no swap accounting")
    code = "import sys; sys.stdin.readline(); b = bytearray(96 << 20); print('survived')"
    proc = made.spawn(sys.executable, "-c", code, pipes=True)
    cg.add(proc.pid)
    out, _ = proc.communicate(b"go\n", timeout=30)
    assert proc.returncode == -9 and out == b""  # the OOM killer, inside the VE only


def _counter(path: str) -> int:
    for _ in range(100):
        try:
            with open(path) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            time.sleep(0.01)
    raise AssertionError("the counter never wrote")


@pytest.mark.parametrize("freezer", _freezers())
def test_freeze_and_thaw(made: Made, freezer: str) -> None:
    cg = made.cgroups(freezer=freezer)
    assert cg.freezer_version == int(freezer[1])
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        path = os.path.join(tmp, "count")
        proc = made.spawn(sys.executable, "-c", COUNTER, path)
        # The counter writes into tmp until killed: kill it before tmp goes,
        # or removing the directory races with its next file.
        stack.callback(proc.wait)
        stack.callback(proc.kill)
        cg.add(proc.pid)
        first = _counter(path)
        time.sleep(0.1)
        assert _counter(path) > first
        assert not cg.frozen()
        cg.freeze()
        cg.freeze()  # idempotent
        assert cg.frozen()
        with open(f"/proc/{proc.pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        assert state in ("D", "S", "T")  # not running
        held = _counter(path)
        time.sleep(0.3)
        assert _counter(path) == held
        cg.thaw()
        assert not cg.frozen()
        time.sleep(0.1)
        assert _counter(path) > held


@pytest.mark.parametrize("freezer", _freezers())
def test_destroy_kills_frozen(made: Made, freezer: str) -> None:
    cg = made.cgroups(freezer=freezer)
    proc = made.spawn("sleep", "60")
    cg.add(proc.pid)
    cg.freeze()
    cg.destroy(kill=True)
    assert proc.wait(timeout=10) == -9
    assert not cg.exists()


def test_two_ves_apart(made: Made) -> None:
    one, two = made.cgroups(101), made.cgroups(102)
    a, b = made.spawn("sleep", "60"), made.spawn("sleep", "60")
    one.add(a.pid)
    two.add(b.pid)
    one.freeze()
    assert one.frozen() and not two.frozen()
    assert one.pids() == [a.pid] and two.pids() == [b.pid]
    one.destroy(kill=True)
    assert two.pids() == [b.pid]


def test_bad_names_and_missing() -> None:
    with pytest.raises(VzcptError):
        VeCgroups(-1)
    with pytest.raises(VzcptError):
        VeCgroups(101, parent="../escape")
    with pytest.raises(VzcptError):
        VeCgroups(101, parent="/abs")
    cg = VeCgroups(101, parent=f"vzcpt-test-missing-{uuid.uuid4().hex}")
    assert not cg.exists()
    with pytest.raises(VzcptError, match="no cgroup"):
        cg.freeze()
    with pytest.raises(VzcptError, match="no cgroup"):
        cg.set_limits(numproc=5)
    cg.destroy()  # nothing to do
