"""vzctl chkpnt and vzctl restore of whole VEs, checked from inside the VE."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from harness import build
from vehost import Host, address
from vzcpt.ve import net

COUNTER = Path(__file__).parent.parent / "examples" / "counter.py"


def last_count(log: Path) -> int:
    return int(log.read_text().splitlines()[-1].split()[3])


def start_counter(host: Host, veid: int) -> Path:
    shutil.copy(COUNTER, host.paths.private(veid) / "root" / "counter.py")
    host.vzctl(
        "exec",
        veid,
        "setsid python3 /root/counter.py /root/counter.log </dev/null >/dev/null 2>&1 &",
    )
    log = host.paths.private(veid) / "root" / "counter.log"
    deadline = time.monotonic() + 10
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline, "the counter did not start"
        time.sleep(0.1)
    return log


def inside_pids(host: Host, veid: int) -> dict[int, str]:
    """pid -> command of the VE's own processes (not those of the exec that looks)."""
    out = host.vzctl("exec", veid, "ps -eo pid=,comm=").stdout.split()
    pairs = zip(out[::2], out[1::2], strict=True)
    return {int(pid): comm for pid, comm in pairs if comm not in ("ps", "sh")}


def test_chkpnt_and_restore_a_ve(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid, "--hostname", "cpt", "--ipadd", address(veid))
    host.vzctl("start", veid)
    log = start_counter(host, veid)
    host.vzctl(
        "exec", veid, "mkdir /dev/shm/d && echo kept > /dev/shm/d/note && chmod 640 /dev/shm/d/note"
    )
    host.vzctl(
        "exec",
        veid,
        "echo 1 > /proc/sys/net/ipv4/ip_forward && "
        "echo '40000 50000' > /proc/sys/net/ipv4/ip_local_port_range",
    )
    before = inside_pids(host, veid)
    host.vzctl("chkpnt", veid)
    dump = host.paths.default_dumpfile(veid)
    assert dump.stat().st_mode & 0o777 == 0o600
    assert host.vzctl("status", veid).stdout.split()[3:] == ["unmounted", "stopped"]
    count_at_dump = last_count(log)
    time.sleep(1)
    assert last_count(log) == count_at_dump, "the VE still runs after chkpnt"
    host.vzctl("restore", veid)
    assert host.vzctl("status", veid).stdout.split()[3:] == ["mounted", "running"]
    time.sleep(1.5)
    assert last_count(log) > count_at_dump
    # Same processes with the same pids inside; the counter went on, not over.
    after = inside_pids(host, veid)
    assert after == before
    assert host.vzctl("exec", veid, "hostname").stdout.strip() == "cpt"
    # The VE's memory-backed /dev/shm came back with it.
    shm = host.vzctl("exec", veid, "cat /dev/shm/d/note; stat -c %a /dev/shm/d/note").stdout
    assert shm.split() == ["kept", "640"]
    # So did the settings of its network namespace.
    sysctls = host.vzctl(
        "exec", veid, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/ip_local_port_range"
    ).stdout.split()
    assert sysctls == ["1", "40000", "50000"]
    assert address(veid) in host.vzctl("exec", veid, "ip -br addr show eth0").stdout
    assert not net.is_network_locked(veid)
    # A program inside renames the VE: the names come back as the VE had them.
    host.vzctl("exec", veid, "hostname renamed && domainname example.org")
    # And again, twice: a restored VE checkpoints and restores like any other.
    for cycle in ("second", "third"):
        host.vzctl("chkpnt", veid, "--dumpfile", host.root / f"{cycle}.dump")
        host.vzctl("restore", veid, "--dumpfile", host.root / f"{cycle}.dump")
        count = last_count(log)
        time.sleep(1.5)
        assert last_count(log) > count, f"the counter stopped after the {cycle} restore"
        assert inside_pids(host, veid) == before
        names = host.vzctl("exec", veid, "hostname; domainname").stdout.split()
        assert names == ["renamed", "example.org"], names


def test_failed_chkpnt_leaves_the_ve_running(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid, "--ipadd", address(veid))
    host.vzctl("start", veid)
    # A netlink socket: not supported, so the checkpoint must refuse it.
    host.vzctl(
        "exec",
        veid,
        "setsid python3 -c 'import socket,time; s=socket.socket(socket.AF_NETLINK, "
        "socket.SOCK_RAW); time.sleep(600)' </dev/null >/dev/null 2>&1 &",
    )
    time.sleep(0.5)
    result = host.vzctl("chkpnt", veid, check=False)
    assert result.returncode != 0 and "a netlink socket" in result.stderr
    assert "Traceback" not in result.stderr
    assert host.vzctl("status", veid).stdout.split()[3:] == ["mounted", "running"]
    assert not net.is_network_locked(veid)
    assert "python3" in host.vzctl("exec", veid, "ps -eo comm=").stdout


def test_restore_needs_a_ve_dump(host: Host, tmp_path: Path) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    result = host.vzctl("restore", veid, "--dumpfile", tmp_path / "none.img", check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert host.vzctl("status", veid).stdout.split()[3:] == ["unmounted", "stopped"]


def test_every_stage_on_its_own(host: Host) -> None:
    """suspend, dump, resume; suspend, dump, kill; undump, resume — each its own vzctl.

    Inside: the Python counter and a shell loop that forks a sleep each round.
    """
    veid = host.new_veid()
    host.vzctl("create", veid, "--ipadd", address(veid))
    host.vzctl("start", veid)
    log = start_counter(host, veid)
    host.vzctl(
        "exec",
        veid,
        "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i >> /root/loop; "
        "sleep 0.05; done' </dev/null >/dev/null 2>&1 &",
    )
    loop = host.paths.private(veid) / "root" / "loop"

    def state() -> str:
        return host.vzctl("status", veid).stdout.split()[4]

    def holds_still() -> int:
        count = last_count(log)
        time.sleep(0.8)
        assert last_count(log) == count, "the VE ran while it should be frozen"
        return count

    host.vzctl("chkpnt", veid, "--suspend")
    assert state() == "suspended" and net.is_network_locked(veid)
    holds_still()
    host.vzctl("chkpnt", veid, "--dump", "--dumpfile", host.root / "one.img")
    assert state() == "dumped"
    holds_still()
    host.vzctl("chkpnt", veid, "--resume")
    assert state() == "running" and not net.is_network_locked(veid)
    count = last_count(log)
    time.sleep(1)
    assert last_count(log) > count

    host.vzctl("chkpnt", veid, "--suspend")
    host.vzctl("chkpnt", veid, "--dump", "--dumpfile", host.root / "two.img")
    at_dump = holds_still()
    for illegal in (("restore", veid), ("start", veid), ("chkpnt", veid, "--suspend")):
        result = host.vzctl(*illegal, check=False)
        assert result.returncode != 0 and "dumped" in result.stderr, result.stderr
    host.vzctl("chkpnt", veid, "--kill")
    assert state() == "stopped"
    host.vzctl("restore", veid, "--undump", "--dumpfile", host.root / "two.img")
    assert state() == "restored-frozen" and net.is_network_locked(veid)
    assert holds_still() == at_dump
    rounds = loop.read_text().split()
    host.vzctl("restore", veid, "--resume")
    assert state() == "running"
    time.sleep(1)
    assert last_count(log) > at_dump
    # The loop went on from where it was: no restart, no gap.
    numbers = [int(n) for n in loop.read_text().split()]
    assert len(numbers) > len(rounds) and numbers == list(range(1, len(numbers) + 1))


def test_restore_on_a_second_host(host: Host, tmp_path: Path) -> None:
    """Checkpoint on one "host", copy the private area, config and dump, restore on another."""
    veid = host.new_veid()
    host.vzctl("create", veid, "--ipadd", address(veid))
    host.vzctl("start", veid)
    log = start_counter(host, veid)
    host.vzctl("chkpnt", veid)
    at_dump = last_count(log)
    other = Host(tmp_path / "second")
    other.veids.append(veid)
    try:
        for part in (host.paths.private(veid), host.paths.ve_conf(veid)):
            target = other.paths.host(str(part).removeprefix(str(host.root)))
            target.parent.mkdir(parents=True, exist_ok=True)
            if part.is_dir():
                shutil.copytree(part, target, symlinks=True)
            else:
                shutil.copy2(part, target)
        dump = other.root / "migrated.img"
        shutil.copy2(host.paths.default_dumpfile(veid), dump)
        other.vzctl("restore", veid, "--dumpfile", dump)
        moved_log = other.paths.private(veid) / "root" / "counter.log"
        time.sleep(1.5)
        assert last_count(moved_log) > at_dump
        assert last_count(log) == at_dump  # the first host's copy stays stopped
    finally:
        other.cleanup()


def start_sysv_program(host: Host, veid: int) -> Path:
    """In the VE: a semaphore set, a message queue, and mem_sysv_shm with its segment."""
    root = host.paths.private(veid) / "root"
    shutil.copy(build("mem_sysv_shm"), root / "mem_sysv_shm")
    host.vzctl(
        "exec",
        veid,
        "ipcmk -S 3 >/dev/null && ipcmk -Q >/dev/null && "
        "setsid /root/mem_sysv_shm /root/report </dev/null >/dev/null 2>&1 &",
    )
    report = root / "report"
    deadline = time.monotonic() + 10
    while "READY" not in (report.read_text() if report.exists() else ""):
        assert time.monotonic() < deadline, "the program did not get ready"
        time.sleep(0.1)
    return report


def sysv_objects(host: Host, veid: int) -> list[list[str]]:
    """Key and id of every System V object of the VE, as ipcs shows them inside."""
    out = host.vzctl("exec", veid, "ipcs").stdout
    return sorted(line.split()[:2] for line in out.splitlines() if line.startswith("0x"))


def verify_sysv_program(host: Host, veid: int, report: Path) -> None:
    host.vzctl("exec", veid, "kill -USR1 $(pgrep -x mem_sysv_shm)")
    deadline = time.monotonic() + 10
    while not any(w in report.read_text() for w in ("OK", "FAIL")):
        assert time.monotonic() < deadline, "no verdict"
        time.sleep(0.1)
    assert report.read_text().splitlines()[-1] == "OK", report.read_text()


def test_system_v_ipc_of_a_ve(host: Host) -> None:
    """Shared memory (content checked from inside), semaphores and queues keep their ids."""
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    report = start_sysv_program(host, veid)
    before = sysv_objects(host, veid)
    assert len(before) == 3
    host.vzctl("chkpnt", veid)
    host.vzctl("restore", veid)
    assert sysv_objects(host, veid) == before
    verify_sysv_program(host, veid, report)


def test_system_v_ipc_through_every_stage(host: Host) -> None:
    """The same program through the staged forms: suspend, dump, resume (it runs on);
    suspend, dump, kill; restore --undump, --resume."""
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    report = start_sysv_program(host, veid)
    before = sysv_objects(host, veid)
    assert len(before) == 3
    host.vzctl("chkpnt", veid, "--suspend")
    host.vzctl("chkpnt", veid, "--dump", "--dumpfile", host.root / "one.img")
    host.vzctl("chkpnt", veid, "--resume")
    assert sysv_objects(host, veid) == before
    host.vzctl("chkpnt", veid, "--suspend")
    host.vzctl("chkpnt", veid, "--dump", "--dumpfile", host.root / "two.img")
    host.vzctl("chkpnt", veid, "--kill")
    assert host.vzctl("status", veid).stdout.split()[4] == "stopped"
    host.vzctl("restore", veid, "--undump", "--dumpfile", host.root / "two.img")
    assert host.vzctl("status", veid).stdout.split()[4] == "restored-frozen"
    host.vzctl("restore", veid, "--resume")
    assert sysv_objects(host, veid) == before
    verify_sysv_program(host, veid, report)
