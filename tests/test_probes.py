"""The kernel probes behind `vzcpt check`, on the live kernel."""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import re
import subprocess
import sys

import pytest

from vzcpt.kernel import probes
from vzcpt.kernel.probes import PROBE_NAMES, Probe, all_probes, require
from vzcpt.kernel.vdso import vdso_fingerprint


def _kernel() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    assert m
    return int(m.group(1)), int(m.group(2))


def _children() -> set[int]:
    kids: set[int] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as f:
            kids.update(int(p) for p in f.read().split())
    return kids


def _kconfig(option: str) -> str | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(rf"^{option}=(\S+)$", text, re.M)
    return m.group(1) if m else "n"


def test_all_probes_run_and_leave_nothing_behind() -> None:
    before = _children()
    results = all_probes()
    assert [p.name for p in results] == list(PROBE_NAMES)
    assert len(set(PROBE_NAMES)) == len(PROBE_NAMES)
    for p in results:
        assert isinstance(p, Probe) and isinstance(p.ok, bool)
        assert p.detail, p.name
    assert _children() == before
    scratch = f"vzcpt-probe-{os.getpid()}-*"
    assert not glob.glob(f"/sys/fs/cgroup/{scratch}") + glob.glob(f"/sys/fs/cgroup/*/{scratch}")


# Features DESIGN.md "Facts" documents for this kernel, with the release that brought them.
DOCUMENTED = {
    "root": (0, 0),
    "ptrace_seize": (3, 4),
    "xstate": (3, 4),
    "rseq": (5, 13),
    "process_vm_readv": (3, 2),
    "pagemap_pfn": (4, 2),
    "pidfd": (5, 6),
    "clone3_set_tid": (5, 5),
    "ns_last_pid": (3, 3),
    "prctl_mm_map": (3, 18),
    "vdso": (0, 0),
    "uffd_wp": (5, 7),
    "pagemap_scan": (6, 7),
    "tcp_repair": (3, 5),
    "namespaces": (3, 8),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_feature_is_there(name: str) -> None:
    if _kernel() < DOCUMENTED[name]:
        pytest.skip(f"{name} needs Linux {'.'.join(map(str, DOCUMENTED[name]))}+")
    probe = require(name)
    assert probe.ok, f"{name}: {probe.detail}"


def _mounted(fstype: str, option: str | None) -> bool:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fs, _source, opts = line.partition(" - ")[2].split()[:3]
            if fs == fstype and (option is None or option in opts.split(",")):
                return True
    return False


@pytest.mark.parametrize(
    ("name", "fstype", "option"),
    [("freezer_v1", "cgroup", "freezer"), ("freezer_v2", "cgroup2", None)],
)
def test_freezer_found_where_mounted(name: str, fstype: str, option: str | None) -> None:
    # This host has both; v2-only hosts have no v1 freezer, which is fine.
    if not _mounted(fstype, option):
        pytest.skip(f"no {fstype} {option or ''} hierarchy mounted on this host")
    probe = require(name)
    assert probe.ok, probe.detail


def test_vdso_layout_of_new_kernels() -> None:
    detail = require("vdso").detail
    assert "[vdso]" in detail and "[vvar]" in detail
    if _kernel() >= (6, 13):
        assert "[vvar_vclock]" in detail


def test_soft_dirty_reported_with_reason() -> None:
    conf = _kconfig("CONFIG_MEM_SOFT_DIRTY")
    probe = require("soft_dirty")
    if conf == "y":
        assert probe.ok, probe.detail
        return
    if conf is None:
        pytest.skip("no /proc/config.gz to tell whether soft-dirty is compiled in")
    assert not probe.ok
    assert "missing" in probe.detail and "bit 55" in probe.detail
    assert "CONFIG_MEM_SOFT_DIRTY" in probe.detail


def test_vdso_fingerprint_stable_and_shared_across_processes() -> None:
    mine = vdso_fingerprint()
    assert mine == vdso_fingerprint()
    release, _, digest = mine.partition(":")
    assert release == os.uname().release
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    other = subprocess.run(
        [sys.executable, "-c", "from vzcpt.kernel.vdso import vdso_fingerprint as f; print(f())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert other == mine


def test_require_caches_and_names_unknown_probes() -> None:
    assert require("kcmp") is require("kcmp")
    with pytest.raises(KeyError, match="no probe named"):
        require("no-such-probe")


def test_probe_is_frozen() -> None:
    probe = probes.Probe("x", True, "y")
    with pytest.raises(dataclasses.FrozenInstanceError):
        probe.ok = False  # type: ignore[misc]
