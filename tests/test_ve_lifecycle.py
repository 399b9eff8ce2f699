"""VEs through vzctl, as an operator runs them: create, start, exec, set, list, stop, destroy.

Each test gets its own VZCPT_ROOT and VEIDs nobody else uses, and removes
its VEs (processes, mounts, cgroups, veths) even when it fails.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from vehost import VZCTL, Host, address
from vzcpt.ve import rootfs
from vzcpt.ve.cgroups import VeCgroups
from vzcpt.ve.state import VeLock


def test_ve_lifecycle(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid, "--hostname", "alpha", "--ipadd", address(veid))
    assert 'HOSTNAME="alpha"' in host.paths.ve_conf(veid).read_text()
    assert host.vzctl("status", veid).stdout.split()[3:] == ["unmounted", "stopped"]
    host.vzctl("start", veid)
    assert host.vzctl("status", veid).stdout.split()[3:] == ["mounted", "running"]
    inside = host.vzctl(
        "exec",
        veid,
        "hostname; cat /proc/1/cmdline | cut -c1-4; "
        "ip -br addr show eth0; test -e /work && echo LEAK; "
        "touch /usr/x 2>/dev/null && echo RW; echo ok > /etc/probe",
    ).stdout
    lines = inside.splitlines()
    assert lines[0] == "alpha" and lines[1] == "init"
    assert address(veid) in lines[2]
    assert "LEAK" not in inside and "RW" not in inside
    assert (host.paths.private(veid) / "etc" / "probe").read_text() == "ok\n"
    assert not Path("/etc/probe").exists()
    listed = host.vzctl("list").stdout
    assert any(
        line.split()[0] == str(veid) and "running" in line and address(veid) in line
        for line in listed.splitlines()
    )
    host.vzctl("stop", veid)
    assert host.vzctl("status", veid).stdout.split()[3:] == ["unmounted", "stopped"]
    assert not rootfs.mounts_under(str(host.root))
    assert not VeCgroups(veid).exists()
    host.vzctl("destroy", veid)
    assert not host.paths.private(veid).exists()
    assert host.vzctl("status", veid).stdout.split()[2] == "deleted"


def test_two_ves_at_once_and_orphans_reaped(host: Host) -> None:
    a, b = host.new_veid(), host.new_veid()
    for veid in (a, b):
        host.vzctl("create", veid, "--ipadd", address(veid))
        host.vzctl("start", veid)
    assert host.vzctl("exec", a, "hostname").stdout.strip() != ""
    # An orphan is adopted and, once it exits, reaped by the VE's init.
    host.vzctl("exec", a, "sleep 0.3 & exit 0")
    time.sleep(1)
    states = host.vzctl("exec", a, "ps -eo stat=").stdout.split()
    assert "Z" not in "".join(states)
    # Each sees only its own processes.
    assert host.vzctl("exec", b, "ps -eo pid= | wc -l").stdout.strip() in ("3", "4")
    host.vzctl("stop", a)
    assert host.vzctl("status", b).stdout.split()[4] == "running"


def test_illegal_transitions_and_bad_input(host: Host) -> None:
    veid = host.new_veid()
    for args, words in (
        (("start", veid), "does not exist"),
        (("enter", veid), "does not exist"),  # one line: no "entered into" first
        (("start", "abc"), "invalid VEID"),
        (("start", "0"), "invalid VEID"),
        (("create", veid, "--ostemplate", "no-such-template"), "template"),
    ):
        result = host.vzctl(*args, check=False)
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert words in result.stderr, result.stderr
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    for args in (("start", veid), ("destroy", veid), ("create", veid)):
        result = host.vzctl(*args, check=False)
        assert result.returncode != 0 and "running" in result.stderr, result.stderr
    host.vzctl("stop", veid)
    result = host.vzctl("exec", veid, "true", check=False)
    assert result.returncode != 0 and "stopped" in result.stderr


def test_lock_keeps_two_vzctl_apart(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    with VeLock(host.paths, veid):
        result = host.vzctl("start", veid, check=False)
    assert result.returncode != 0
    assert f"pid {os.getpid()}" in result.stderr and "locked" in result.stderr
    assert host.vzctl("status", veid).stdout.split()[4] == "stopped"


def test_set_on_a_running_ve(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid, "--ipadd", address(veid))
    host.vzctl("start", veid)
    extra = f"10.252.{veid % 250}.7"
    host.vzctl(
        "set",
        veid,
        "--hostname",
        "beta",
        "--ipadd",
        extra,
        "--numproc",
        "64",
        "--ram",
        "256M",
        "--save",
    )
    assert host.vzctl("exec", veid, "hostname").stdout.strip() == "beta"
    assert extra in host.vzctl("exec", veid, "ip -br addr show eth0").stdout
    limits = VeCgroups(veid).read_limits()
    assert limits["numproc"] == 64 and limits["ram_bytes"] == 256 << 20
    conf = host.paths.ve_conf(veid).read_text()
    assert 'HOSTNAME="beta"' in conf and extra in conf


def test_enter_gives_a_shell_inside(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid, "--hostname", "shell")
    host.vzctl("start", veid)
    session = f"vzcpt-enter-{veid}"
    command = f"VZCPT_ROOT={host.root} {' '.join(VZCTL)} enter {veid}"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "20", command], check=True
    )
    try:
        time.sleep(1.5)
        subprocess.run(
            ["tmux", "send-keys", "-t", session, "echo in-$(hostname)-$$", "Enter"], check=True
        )
        deadline = time.monotonic() + 10
        screen = ""
        while "in-shell-" not in screen.replace("$(hostname)", ""):
            assert time.monotonic() < deadline, screen
            time.sleep(0.2)
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        assert any(line.startswith("in-shell-") for line in screen.splitlines())
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def test_the_ves_own_init(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    init = host.paths.private(veid) / "root" / "myinit"
    init.write_text("#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 0.2; done\n")
    init.chmod(0o755)
    host.vzctl("set", veid, "--init", "/root/myinit", "--save")
    host.vzctl("start", veid)
    assert "/root/myinit" in host.vzctl("exec", veid, "tr '\\0' ' ' < /proc/1/cmdline").stdout
    # The VE's own init is checkpointed and restored like the rest: still pid 1,
    # still looping, and still stopping the VE when asked.
    host.vzctl("chkpnt", veid)
    host.vzctl("restore", veid)
    assert "/root/myinit" in host.vzctl("exec", veid, "tr '\\0' ' ' < /proc/1/cmdline").stdout
    assert host.vzctl("exec", veid, "cat /proc/1/stat").stdout.split()[2] in "SR"
    host.vzctl("stop", veid)
    assert host.vzctl("status", veid).stdout.split()[4] == "stopped"
