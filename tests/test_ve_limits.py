"""A VE's cgroup limits and membership through chkpnt and restore, read from inside."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from vehost import Host
from vzcpt.ve.cgroups import VeCgroups

COUNTER = Path(__file__).parent.parent / "examples" / "counter.py"
MIB = 1 << 20

# From inside the VE: each limit read through a cgroup mount of the VE's own
# cgroup namespace (so its root is the VE's cgroup), made in a private mount
# namespace that disappears with the command.
READ_LIMITS = """unshare -m sh -c '
for c in memory pids cpu; do mkdir -p /tmp/cg-$c; mount -t cgroup -o $c cg /tmp/cg-$c; done
cat /tmp/cg-memory/memory.limit_in_bytes /tmp/cg-memory/memory.memsw.limit_in_bytes \
    /tmp/cg-pids/pids.max /tmp/cg-cpu/cpu.cfs_quota_us /tmp/cg-cpu/cpu.cfs_period_us
for c in memory pids cpu; do umount /tmp/cg-$c; rmdir /tmp/cg-$c; done'"""

# Every process of the VE (not the shell that looks), and its cgroups.
READ_MEMBERSHIP = """for p in /proc/[0-9]*; do
  [ "${p#/proc/}" = "$$" ] && continue
  c=$(cat $p/comm 2>/dev/null) || continue
  case $c in sh|cat|sort|tr) continue;; esac
  echo "${p#/proc/} $c $(tr '\\n' ' ' < $p/cgroup)"
done | sort -n"""


def test_limits_and_membership_come_back(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl(
        "set", veid, "--ram", "256M", "--swap", "64M", "--cpus", "1", "--numproc", "100", "--save"
    )
    host.vzctl("start", veid)
    # Changed on the running VE only: the config still says 256M, 1 CPU, 100 processes.
    host.vzctl("set", veid, "--ram", "200M", "--numproc", "77", "--cpus", "2")
    shutil.copy(COUNTER, host.paths.private(veid) / "root" / "counter.py")
    host.vzctl(
        "exec",
        veid,
        "setsid python3 /root/counter.py /root/counter.log </dev/null >/dev/null 2>&1 & "
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 &",
    )
    limits = host.vzctl("exec", veid, READ_LIMITS).stdout.split()
    assert limits == [str(200 * MIB), str(264 * MIB), "77", "200000", "100000"]
    members = host.vzctl("exec", veid, READ_MEMBERSHIP).stdout.splitlines()
    assert [line.split()[1] for line in members] == ["python3", "python3", "sleep"]
    assert all(line.count(":/ ") == line.count(":") // 2 for line in members), members
    host_pids = VeCgroups(veid).pids()

    host.vzctl("chkpnt", veid)
    host.vzctl("restore", veid)
    assert host.vzctl("exec", veid, READ_LIMITS).stdout.split() == limits
    assert host.vzctl("exec", veid, READ_MEMBERSHIP).stdout.splitlines() == members
    # From the host: every process of the VE is in the VE's cgroup of every hierarchy
    # it uses (v1 memory, pids, cpu, freezer; the v2 unified one), and none else is.
    cgroups = VeCgroups(veid)
    assert len(cgroups.pids()) == len(host_pids)
    for path in cgroups.paths():
        procs = (Path(path) / "cgroup.procs").read_text().split()
        assert sorted(map(int, procs)) == cgroups.pids(), path
    # The restored VE is frozen as a whole through its cgroups: with the v2 freezer
    # (cgroup.freeze) wherever a unified hierarchy exists, as on hybrid hosts.
    host.vzctl("chkpnt", veid, "--suspend")
    try:
        if cgroups.freezer_version == 2:
            unified = next(p for p in cgroups.paths() if "cgroup.freeze" in os.listdir(p))
            events = (Path(unified) / "cgroup.events").read_text().split("\n")
            assert "frozen 1" in events
        else:
            freezer = next(p for p in cgroups.paths() if "freezer.state" in os.listdir(p))
            assert (Path(freezer) / "freezer.state").read_text().strip() == "FROZEN"
        log = host.paths.private(veid) / "root" / "counter.log"
        count = log.read_text()
        time.sleep(0.8)
        assert log.read_text() == count, "the counter ran while frozen"
    finally:
        host.vzctl("chkpnt", veid, "--resume")
