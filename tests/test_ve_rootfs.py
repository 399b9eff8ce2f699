"""A VE's root file system: OS templates, the root mount, entering it at start.

Everything lives under VZCPT_ROOT=tmp_path; the `paths` fixture unmounts all
below tmp_path even when a test fails, then checks /proc/self/mountinfo.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import stat
import sys
import tarfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzcpt.errors import VzcptError
from vzcpt.kernel import mounts as m
from vzcpt.proc.mountinfo import parse_mountinfo
from vzcpt.ve import rootfs, templates
from vzcpt.ve.paths import Paths

VEID = 101

slow = pytest.mark.skipif(
    os.environ.get("VZCPT_SLOW_TESTS") != "1",
    reason="slow (debootstrap downloads ~100 MB): set VZCPT_SLOW_TESTS=1",
)


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Paths]:
    monkeypatch.setenv("VZCPT_ROOT", str(tmp_path))
    try:
        yield Paths.from_env()
    finally:
        rootfs.umount_tree(str(tmp_path))
    assert not rootfs.mounts_under(str(tmp_path)), "mounts left behind"


def private(paths: Paths, veid: int = VEID) -> Path:
    return Path(paths.private(veid))


def leftovers(paths: Paths) -> list[str]:
    """What a failed create left in /vz/private."""
    parent = private(paths).parent
    return sorted(os.listdir(parent)) if parent.exists() else []


# --- the built-in template ----------------------------------------------------


def test_builtin_template(paths: Paths) -> None:
    templates.create_private(paths, VEID)
    priv = private(paths)
    for name in rootfs.SYSTEM_DIRS:  # mirrors the host: symlink or empty mount point
        host = Path("/" + name)
        if host.is_symlink():
            assert os.readlink(priv / name) == os.readlink(host)
        elif host.is_dir():
            assert (priv / name).is_dir() and not any((priv / name).iterdir())
        else:
            assert not os.path.lexists(priv / name)
    record = json.loads((priv / rootfs.TEMPLATE_RECORD).read_text())
    assert record["template"] == templates.BUILTIN
    assert record["readonly_binds"] == rootfs.readonly_binds(str(priv))
    assert "usr" in record["readonly_binds"]
    for name, mode in templates.SKELETON:
        assert stat.S_IMODE((priv / name).stat().st_mode) == mode, name
    # /etc: a copy, less the secrets
    assert (priv / "etc/passwd").read_bytes() == Path("/etc/passwd").read_bytes()
    assert not list((priv / "etc").glob("ssh/ssh_host_*"))
    assert not (priv / "etc/shadow-").exists() and not (priv / "etc/gshadow-").exists()
    assert (priv / "etc/machine-id").read_bytes() == b""
    for line in (priv / "etc/shadow").read_text().splitlines():
        assert line.split(":")[1] == "*", line  # no password hash of the host's
    shadow = (priv / "etc/shadow").stat()
    assert shadow.st_uid == 0 and stat.S_IMODE(shadow.st_mode) == 0o640
    # /var: directories only, run -> /run
    assert os.readlink(priv / "var/run") == "/run"
    assert stat.S_IMODE((priv / "var/tmp").stat().st_mode) == 0o1777
    assert not [f for f in (priv / "var").rglob("*") if f.is_file() and not f.is_symlink()]
    assert templates.BUILTIN in templates.list_templates(paths)
    assert leftovers(paths) == [str(VEID)]


# --- tarballs -------------------------------------------------------------------


def add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    data = kw.pop("data", b"")
    assert isinstance(data, bytes)
    for key, value in kw.items():
        setattr(info, key, value)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_tarball(path: Path, mode: str = "w:gz") -> None:
    """A tiny OS tree: absolute symlink, set-uid file, foreign owner, sticky dir."""
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        add(tar, "./etc", tarfile.DIRTYPE, mode=0o755)
        add(tar, "./etc/os-release", data=b"ID=mini\n", mode=0o644)
        add(tar, "./var", tarfile.DIRTYPE, mode=0o755)
        add(tar, "./var/run", tarfile.SYMTYPE, linkname="/run")
        add(tar, "./tmp", tarfile.DIRTYPE, mode=0o1777)
        add(tar, "./bin", tarfile.DIRTYPE, mode=0o755)
        add(tar, "./bin/su", data=b"#!/bin/true\n", mode=0o4755)
        add(tar, "./home", tarfile.DIRTYPE, mode=0o755)
        add(tar, "./home/u", tarfile.DIRTYPE, mode=0o700, uid=4242, gid=4343, uname="nosuch")


@pytest.mark.parametrize("how", ["name", "path-xz"])
def test_tarball_template(paths: Paths, tmp_path: Path, how: str) -> None:
    cache = Path(templates.template_cache(paths))
    cache.mkdir(parents=True)
    if how == "name":
        make_tarball(cache / "mini-1.tar.gz")
        template = "mini-1"
        assert "mini-1" in templates.list_templates(paths)
    else:
        template = str(tmp_path / "mini.tar.xz")
        make_tarball(Path(template), "w:xz")
    templates.create_private(paths, VEID, template)
    priv = private(paths)
    assert (priv / "etc/os-release").read_bytes() == b"ID=mini\n"
    assert os.readlink(priv / "var/run") == "/run"
    assert stat.S_IMODE((priv / "bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((priv / "tmp").stat().st_mode) == 0o1777
    home = (priv / "home/u").stat()
    assert (home.st_uid, home.st_gid) == (4242, 4343)  # numeric, not by name
    for name in ("dev", "proc", "sys"):
        assert (priv / name).is_dir()
    record = json.loads((priv / rootfs.TEMPLATE_RECORD).read_text())
    assert record["readonly_binds"] == []


def test_tarball_cannot_write_outside(paths: Paths, tmp_path: Path) -> None:
    """A symlink to a host directory, then a member through it: nothing lands there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        add(tar, "./etc", tarfile.SYMTYPE, linkname=str(outside))
        add(tar, "./etc/passwd", data=b"owned\n", mode=0o644)
        add(tar, "../escaped", data=b"owned\n", mode=0o644)
    with pytest.raises(VzcptError):
        templates.create_private(paths, VEID, str(evil))
    assert list(outside.iterdir()) == []
    assert not (private(paths).parent.parent / "escaped").exists()
    assert leftovers(paths) == []


@pytest.mark.parametrize(
    "template,words",
    [
        ("no-such-template", ["unknown OS template", "no-such-template"]),
        ("/nonexistent/t.tar.gz", ["does not exist", "/nonexistent/t.tar.gz"]),
        ("junk", ["extracting", "junk"]),
        ("../etc", ["does not exist"]),
    ],
)
def test_create_errors(paths: Paths, template: str, words: list[str]) -> None:
    """One-line errors, and nothing left of the half-made private area."""
    cache = Path(templates.template_cache(paths))
    cache.mkdir(parents=True)
    (cache / "junk.tar.gz").write_bytes(b"this is not a tarball\n" * 100)
    with pytest.raises(VzcptError) as err:
        templates.create_private(paths, VEID, template)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert leftovers(paths) == []


def test_create_refuses_existing(paths: Paths) -> None:
    templates.create_private(paths, VEID)
    marker = private(paths) / "root/mine"
    marker.write_text("keep")
    with pytest.raises(VzcptError, match="already exists"):
        templates.create_private(paths, VEID)
    assert marker.read_text() == "keep"


# --- the root mount on the host ------------------------------------------------


def test_mount_root(paths: Paths) -> None:
    templates.create_private(paths, VEID)
    assert not rootfs.is_mounted(paths, VEID)
    root = Path(rootfs.mount_root(paths, VEID))
    assert root == Path(paths.ve_root(VEID)).resolve()
    assert rootfs.is_mounted(paths, VEID)
    count = len(rootfs.mounts_under(str(root)))
    assert rootfs.mount_root(paths, VEID) == str(root)  # a no-op when mounted
    assert (
        len(rootfs.mounts_under(str(root)))
        == count
        == 1 + len(rootfs.readonly_binds(str(private(paths))))
    )
    # the host's system directories: visible, read-only
    assert (root / "usr/bin/env").exists()
    assert (root / "bin/sh").exists()  # through the usr-merged symlink, or the bind
    probe = root / f"usr/vzcpt-test-{os.getpid()}"
    try:
        with pytest.raises(OSError) as err:
            probe.write_text("x")
        assert err.value.errno == errno.EROFS
    finally:
        Path(f"/usr/{probe.name}").unlink(missing_ok=True)
    # /etc: writable, the VE's own
    name = f"vzcpt-test-{os.getpid()}"
    (root / "etc" / name).write_text("ve")
    assert not Path("/etc", name).exists()
    assert (private(paths) / "etc" / name).read_text() == "ve"
    rootfs.umount_root(paths, VEID)
    assert not rootfs.is_mounted(paths, VEID)
    assert not rootfs.mounts_under(str(root))
    rootfs.umount_root(paths, VEID)  # a no-op when not mounted


def test_umount_root_busy(paths: Paths) -> None:
    """An open file keeps the root busy: it is detached lazily."""
    templates.create_private(paths, VEID)
    root = rootfs.mount_root(paths, VEID)
    with open(os.path.join(root, "etc/passwd")), open(os.path.join(root, "usr/bin/env")):
        rootfs.umount_root(paths, VEID)
        assert not rootfs.mounts_under(root)


def test_mount_root_refuses_symlinked_mount_point(paths: Paths, tmp_path: Path) -> None:
    """The VE owns its private area: a symlink there never redirects a mount,
    and the record cannot name a host directory outside the fixed list."""
    templates.create_private(paths, VEID)
    priv = private(paths)
    outside = tmp_path / "outside"
    outside.mkdir()
    bindable = rootfs.readonly_binds(str(priv))[0]
    os.rmdir(priv / bindable)
    os.symlink(outside, priv / bindable)
    record = {"readonly_binds": [bindable, "etc", "../../.."]}
    (priv / rootfs.TEMPLATE_RECORD).write_text(json.dumps(record))
    assert rootfs.readonly_binds(str(priv)) == [bindable]
    with pytest.raises(VzcptError, match="symlink"):
        rootfs.mount_root(paths, VEID)
    assert not rootfs.mounts_under(str(tmp_path))
    assert not rootfs.mounts_under(str(outside))


def test_mount_root_without_private_area(paths: Paths) -> None:
    with pytest.raises(VzcptError, match="vzctl create"):
        rootfs.mount_root(paths, VEID)
    assert not rootfs.is_mounted(paths, VEID)


# --- entering the root at start --------------------------------------------------


VE_SCRIPT = """
exec >/root/out 2>&1
exec 3<>/dev/ptmx   # opens pty 0 of the new devpts instance
echo "ROOT: $(ls -A / | tr '\\n' ' ')"
echo "PID1: $(tr '\\0' ' ' </proc/1/cmdline)"
echo "SELF: $$"
echo "PTS: $(ls /dev/pts | tr '\\n' ' ')"
echo "PTSDEV: $(stat -c %d /dev/pts)"
test ! -e /work && echo "NOWORK"
cp /proc/self/mountinfo /root/mountinfo
echo done >/tmp/ok
"""


def run_in_ve(root: str, argv: list[str], timeout: float = 10.0) -> int:
    """In a forked child: unshare(CLONE_NEWNS|CLONE_NEWPID), fork the VE's
    pid 1, which enters `root` and execs `argv`. Returns its exit code."""
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 125
        try:
            m.unshare(m.CLONE_NEWNS | m.CLONE_NEWPID)
            init = os.fork()
            if init == 0:
                try:
                    rootfs.enter_root(root)
                    os.execv(argv[0], argv)
                except VzcptError as e:
                    print(f"enter_root: {e}", file=sys.stderr)
                    os._exit(3)
                except BaseException:
                    traceback.print_exc()
                os._exit(126)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pid, status = os.waitpid(init, os.WNOHANG)
                if pid:
                    code = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.01)
            else:
                os.kill(init, signal.SIGKILL)
                os.waitpid(init, 0)
                code = 124
        except BaseException:
            traceback.print_exc()
        os._exit(code)
    try:
        deadline = time.monotonic() + timeout + 5
        while time.monotonic() < deadline:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        raise AssertionError("the VE's parent did not finish")
    finally:
        try:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_enter_root(paths: Paths, tmp_path: Path) -> None:
    templates.create_private(paths, VEID)
    root = rootfs.mount_root(paths, VEID)
    before = rootfs.mounts_under(str(tmp_path))
    assert run_in_ve(root, ["/bin/sh", "-c", VE_SCRIPT]) == 0
    # the VE's mounts were in its own namespace: none reached the host
    assert rootfs.mounts_under(str(tmp_path)) == before
    priv = private(paths)
    out = dict(
        line.split(": ", 1) if ": " in line else (line, "")
        for line in (priv / "root/out").read_text().splitlines()
    )
    assert (priv / "tmp/ok").read_text() == "done\n", out
    assert set(out["ROOT"].split()) == set(os.listdir(priv)), out
    assert out["PID1"].startswith("/bin/sh -c"), out
    assert out["SELF"] == "1"
    assert out["PTS"].split() == ["0", "ptmx"], out  # a new, empty instance
    assert int(out["PTSDEV"]) != os.stat("/dev/pts").st_dev
    assert "NOWORK" in out
    mounts = {mi.mountpoint: mi for mi in parse_mountinfo((priv / "root/mountinfo").read_bytes())}
    assert mounts["/"].root == str(priv)
    assert mounts["/proc"].fstype == "proc" and mounts["/sys"].fstype == "sysfs"
    assert "ro" in mounts["/sys"].options.split(",")
    assert "ro" in mounts["/proc/sys"].options.split(",")
    assert "ro" in mounts["/usr"].options.split(",")
    assert mounts["/dev"].fstype == "tmpfs"
    assert "ptmxmode=666" in mounts["/dev/pts"].super_options
    assert mounts["/dev/shm"].fstype == "tmpfs"
    expected = {"/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"}
    expected |= {"/" + name for name in rootfs.readonly_binds(str(priv))}
    assert set(mounts) - {"/proc/sys", "/proc/sys/net", "/proc/sysrq-trigger"} == expected
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        assert not (priv / "dev" / name).exists()  # on the VE's tmpfs, not in the private area


def test_enter_root_refuses_symlinked_proc(paths: Paths, capfd: pytest.CaptureFixture[str]) -> None:
    """A /proc the VE replaced by a symlink to a host path: no mount, a clear error."""
    templates.create_private(paths, VEID)
    priv = private(paths)
    os.rmdir(priv / "proc")
    os.symlink("/etc", priv / "proc")
    root = rootfs.mount_root(paths, VEID)
    assert run_in_ve(root, ["/bin/true"]) == 3
    assert "proc: is not a directory (a symlink?)" in capfd.readouterr().err


@slow
def test_debian_template(paths: Paths) -> None:
    """debootstrap once into the cache, then a second create from the cache."""
    templates.create_private(paths, VEID, "debian-12")
    assert (private(paths) / "etc/debian_version").read_text().startswith("12")
    cached = Path(templates.template_cache(paths)) / f"debian-12-{os.uname().machine}.tar.gz"
    assert cached.is_file()
    assert "debian-12-" + os.uname().machine in templates.list_templates(paths)
    started = time.monotonic()
    templates.create_private(paths, VEID + 1, "debian-12")
    assert time.monotonic() - started < 60
    assert (private(paths, VEID + 1) / "usr/bin/apt-get").exists()
