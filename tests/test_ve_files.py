"""A VE restore refuses files its programs held open or mapped that changed since chkpnt."""

from __future__ import annotations

import os
import time
from pathlib import Path

from vehost import Host, address
from vzcpt.ve import net, rootfs
from vzcpt.ve.cgroups import VeCgroups

# Holds /root/data open and mapped; on SIGUSR1 checks both still show the
# content it had, and writes OK or FAIL to /root/report.
HOLDER = """
import mmap, signal, sys
f = open("/root/data", "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
seen = m[:]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
open("/root/report", "a").write("READY\\n")
while True:
    try:
        signal.sigwaitinfo({signal.SIGUSR1})
        break
    except InterruptedError:
        pass
f.seek(0)
ok = m[:] == seen and f.read() == seen
open("/root/report", "a").write("OK\\n" if ok else "FAIL content\\n")
"""


def wait_for(report: Path, word: str) -> str:
    deadline = time.monotonic() + 10
    while word not in (text := report.read_text() if report.exists() else ""):
        assert time.monotonic() < deadline, f"no {word} in {report}: {text!r}"
        time.sleep(0.1)
    return text


def nothing_left(host: Host, veid: int) -> None:
    """A refused restore built nothing: no processes, cgroups, network or root mount."""
    assert host.vzctl("status", veid).stdout.split()[3:] == ["unmounted", "stopped"]
    assert not VeCgroups(veid).exists()
    assert not os.path.exists(f"/sys/class/net/{net.host_ifname(veid)}")
    assert not rootfs.mounts_under(str(host.paths.ve_root(veid)))


def test_changed_files_are_refused_until_put_back(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid, "--ipadd", address(veid))
    host.vzctl("start", veid)
    root = host.paths.private(veid) / "root"
    data = root / "data"
    data.write_bytes(b"the data the program holds\n" * 100)
    (root / "holder.py").write_text(HOLDER)
    host.vzctl("exec", veid, "setsid python3 /root/holder.py </dev/null >/dev/null 2>&1 &")
    wait_for(root / "report", "READY")
    host.vzctl("chkpnt", veid)
    original = data.read_bytes()

    data.write_bytes(original + b"more\n")  # grown
    result = host.vzctl("restore", veid, check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert "/root/data" in result.stderr and "size" in result.stderr
    nothing_left(host, veid)

    data.unlink()  # gone
    result = host.vzctl("restore", veid, check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert "/root/data" in result.stderr and "gone" in result.stderr
    nothing_left(host, veid)

    data.write_bytes(original)
    host.vzctl("restore", veid)
    host.vzctl("exec", veid, "pkill -USR1 -o -f holder.py")
    assert wait_for(root / "report", "OK").splitlines()[-1] == "OK"
