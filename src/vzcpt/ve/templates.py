"""OS templates: how `vzctl create VEID --ostemplate NAME|PATH` fills /vz/private/VEID.

- "vzcpt-host" (the default, offline): made from the host's own system. The
  VE gets writable copies of /etc (host secrets left out) and an empty /var,
  /tmp, /root, /home...; the host's /usr (and /bin, /lib... unless they are
  the usr-merged symlinks, which are copied as symlinks) stay on the host and
  are bound read-only by `rootfs.mount_root`, as listed in the private
  area's .vzcpt-template.json.
- NAME: a tarball NAME.tar[.gz|.xz|.zst] (or NAME-ARCH.tar...) in
  /vz/template/cache; PATH: an explicit tarball. Extracted with GNU tar as
  root, numeric owners, modes and xattrs kept. (Python's tarfile 'data'
  filter would refuse the absolute symlinks of every OS tree and clear
  set-uid bits; GNU tar refuses '..' members and delays absolute and '..'
  symlinks to the end, so no member is written through one.)
- debian-N (10..13): a tarball cached as debian-N-ARCH.tar.gz, made once
  with `debootstrap --variant=minbase` from the Debian mirror of the host's
  apt sources (downloads about 100 MB); later creates are offline.

The private area is built in a hidden sibling directory and renamed into
place at the end, so a failed or interrupted create leaves nothing that
looks like a VE.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from typing import IO

from vzcpt.errors import VzcptError
from vzcpt.ve.paths import Paths
from vzcpt.ve.rootfs import SYSTEM_DIRS, TEMPLATE_RECORD, umount_tree

BUILTIN = "vzcpt-host"
SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".tar")
DEBIAN_RELEASES = {"10": "buster", "11": "bullseye", "12": "bookworm", "13": "trixie"}

# /etc entries the VE must not inherit (fnmatch patterns, relative to /etc)
ETC_SECRETS = (
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "ssh/ssh_host_*",
    "ssl/private/*",
    "security/opasswd",
    ".pwd.lock",
    "machine-id",
    "fstab",
    "vz",  # the host's VE configs: other VEs are none of this one's business
    "krb5.keytab",
    "ipsec.secrets",
    "ppp/*-secrets",
    "wireguard/*",
    "NetworkManager/system-connections/*",
    "letsencrypt/*",
)
# empty directories of the VE's tree: (path, mode)
SKELETON = (
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("run", 0o755),
    ("run/lock", 0o1777),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("mnt", 0o755),
    ("media", 0o755),
    ("opt", 0o755),
    ("srv", 0o755),
)
# /var subdirectories whose host skeleton (one level of empty directories,
# with owners) is kept, so that packages find e.g. /var/lib/redis
VAR_SKELETON = ("lib", "log", "cache", "spool")


# mount points every start needs, even in a tarball that lacks them
MOUNT_POINTS = (("dev", 0o755), ("proc", 0o555), ("sys", 0o555))

Filler = Callable[[str], list[str]]  # fills a directory, returns the read-only binds


def template_cache(paths: Paths) -> str:
    """/vz/template/cache: the template tarballs (OpenVZ's place for them)."""
    return str(paths.template_dir / "cache")


def list_templates(paths: Paths) -> list[str]:
    """The built-in template and every tarball in the template cache, by name."""
    names = {BUILTIN}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(template_cache(paths)):
            for suffix in SUFFIXES:
                if entry.name.endswith(suffix) and entry.is_file() and entry.name[0] != ".":
                    names.add(entry.name[: -len(suffix)])
                    break
    return sorted(names)


def create_private(paths: Paths, veid: int, template: str = BUILTIN) -> None:
    """Create VE `veid`'s private area from `template` (a name or a tarball path)."""
    private = os.path.abspath(paths.private(veid))
    if os.path.lexists(private) and not _is_empty_dir(private):
        raise VzcptError(f"VE {veid}: private area {private} already exists")
    fill = _resolve(paths, template or BUILTIN)
    parent, base = os.path.split(private)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    staging = os.path.join(parent, f".{base}.partial-{os.getpid()}")
    try:
        os.mkdir(staging, 0o755)
        os.chmod(staging, 0o755)
        binds = fill(staging)
        for name, mode in MOUNT_POINTS:
            _mkdir(os.path.join(staging, name), mode, exist_ok=True)
        record = {"format": 1, "template": template or BUILTIN, "readonly_binds": binds}
        with open(os.path.join(staging, TEMPLATE_RECORD), "w") as f:
            json.dump(record, f, indent=1)
        try:
            if os.path.isdir(private) and not os.path.islink(private):
                os.rmdir(private)  # the empty directory checked above
            os.rename(staging, private)
        except OSError:  # another create won the race
            raise VzcptError(f"VE {veid}: private area {private} already exists") from None
    except BaseException:
        remove_tree(staging)
        raise


def remove_tree(path: str) -> None:
    """rm -rf that first unmounts anything below `path`, so it never deletes
    through a mount into someone else's files."""
    if not os.path.lexists(path):
        return
    umount_tree(path)
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)


def _is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def _mkdir(path: str, mode: int, exist_ok: bool = False) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        if not exist_ok:
            raise
        return
    os.chmod(path, mode)  # mkdir's mode passes through the umask


# --- which template ------------------------------------------------------------


def _resolve(paths: Paths, template: str) -> Filler:
    """The function that fills a private area for `template`; one-line errors."""
    if template == BUILTIN:
        return _fill_from_host
    if "/" in template or template.endswith(SUFFIXES):
        path = template
        if "/" not in template and not os.path.isfile(template):
            path = os.path.join(template_cache(paths), template)
        if not os.path.isfile(path):
            raise VzcptError(f"OS template tarball {path} does not exist")
        return _tarball_filler(os.path.abspath(path))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", template):
        raise VzcptError(f"invalid OS template name {template!r}")
    cached = _cached_tarball(template_cache(paths), template)
    if cached:
        return _tarball_filler(cached)
    debian = re.fullmatch(r"debian-(\d+)(?:-" + re.escape(_arch()) + ")?", template)
    if debian and debian.group(1) in DEBIAN_RELEASES:
        version = debian.group(1)
        return lambda dest: _tarball_filler(debian_tarball(paths, version))(dest)
    raise VzcptError(
        f"unknown OS template {template!r}: not {BUILTIN}, debian-N or a tarball "
        f"{template_cache(paths)}/{template}.tar[.gz|.xz|.zst]"
    )


def _arch() -> str:
    return platform.machine()


def _cached_tarball(cache: str, name: str) -> str | None:
    for base in (name, f"{name}-{_arch()}"):
        for suffix in SUFFIXES:
            path = os.path.join(cache, base + suffix)
            if os.path.isfile(path):
                return path
    return None


# --- tarballs ---------------------------------------------------------------------


def _tarball_filler(tarball: str) -> Filler:
    def fill(dest: str) -> list[str]:
        # GNU tar finds the compression from the file's content
        cmd = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tarball]
        _run(cmd + ["-C", dest], f"extracting OS template {tarball}")
        return []  # a full OS tree: nothing of the host's

    return fill


_TAR_NOISE = re.compile(r"Removing leading|Exiting with failure|Error is not recoverable")


def _run(cmd: list[str], what: str, log: str | None = None) -> None:
    """Run `cmd`; on failure a one-line error with tar's last line, or the log's name."""
    with contextlib.ExitStack() as stack:
        out: int | IO[bytes] = stack.enter_context(open(log, "wb")) if log else subprocess.PIPE
        try:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        except FileNotFoundError:
            raise VzcptError(f"{what}: {cmd[0]} is not installed") from None
    if proc.returncode != 0:
        if log:
            raise VzcptError(f"{what} failed (exit {proc.returncode}), see {log}")
        lines = (proc.stdout or b"").decode(errors="replace").strip().splitlines()
        # the first error says what went wrong; tar's last line only that it stopped
        useful = [line for line in lines if not _TAR_NOISE.search(line)] or lines
        raise VzcptError(f"{what} failed: {useful[0] if useful else f'exit {proc.returncode}'}")


# --- debootstrap -------------------------------------------------------------------


def debian_tarball(paths: Paths, version: str) -> str:
    """The cached debian-VERSION-ARCH.tar.gz, made with debootstrap if missing."""
    cache = template_cache(paths)
    tarball = os.path.join(cache, f"debian-{version}-{_arch()}.tar.gz")
    if os.path.isfile(tarball):
        return tarball
    if shutil.which("debootstrap") is None:
        raise VzcptError(
            f"OS template debian-{version} is not in {cache} and debootstrap is not "
            "installed (apt-get install debootstrap)"
        )
    mirror = debian_mirror()
    os.makedirs(cache, mode=0o755, exist_ok=True)
    build = os.path.join(cache, f".debian-{version}.build-{os.getpid()}")
    partial = f"{tarball}.partial-{os.getpid()}"
    log = os.path.join(cache, f"debian-{version}.debootstrap.log")
    try:
        # its own mount namespace: the /proc, /sys and /dev binds debootstrap
        # makes inside the target vanish with it, even if it is killed
        cmd = ["unshare", "--mount", "--propagation", "private", "debootstrap"]
        cmd += ["--variant=minbase", DEBIAN_RELEASES[version], build, mirror]
        _run(cmd, f"debootstrap of debian-{version} from {mirror}", log)
        cmd = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-czf", partial]
        _run(cmd + ["-C", build, "."], f"packing {tarball}")
        os.rename(partial, tarball)
    finally:
        remove_tree(build)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return tarball


def debian_mirror() -> str:
    """The Debian mirror the host's apt uses ($VZCPT_DEBIAN_MIRROR overrides)."""
    env = os.environ.get("VZCPT_DEBIAN_MIRROR")
    if env:
        return env
    uris: list[str] = []
    files = ["/etc/apt/sources.list"]
    with contextlib.suppress(FileNotFoundError):
        d = "/etc/apt/sources.list.d"
        names = sorted(n for n in os.listdir(d) if n.endswith((".list", ".sources")))
        files += [os.path.join(d, n) for n in names]
    for path in files:
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 2 and words[0] in ("deb", "URIs:"):
                    uris.append(words[1])
    for uri in uris:
        if re.search(r"/debian/?$", uri):
            return uri
    raise VzcptError("no Debian mirror in the host's apt sources; set VZCPT_DEBIAN_MIRROR")


# --- the built-in template: from the host ------------------------------------------


def _fill_from_host(dest: str) -> list[str]:
    binds: list[str] = []
    for name in SYSTEM_DIRS:
        host = "/" + name
        if os.path.islink(host):  # usr-merged: bin -> usr/bin
            os.symlink(os.readlink(host), os.path.join(dest, name))
        elif os.path.isdir(host):
            _mkdir(os.path.join(dest, name), 0o755)  # a mount point for the host's
            binds.append(name)
    for name, mode in SKELETON:
        _mkdir(os.path.join(dest, name), mode)
    _copy_etc("/etc", os.path.join(dest, "etc"))
    _make_var("/var", os.path.join(dest, "var"))
    return binds


def _copy_etc(src: str, dest: str) -> None:
    _copy_tree(src, dest, "", ETC_SECRETS)
    _write_shadows(dest)
    _write(os.path.join(dest, "machine-id"), b"", 0o444)  # systemd makes one at first boot
    _write(os.path.join(dest, "fstab"), b"# vzcpt VE: the root is mounted by vzctl\n", 0o644)


def _copy_tree(src: str, dest: str, rel: str, skip: tuple[str, ...]) -> None:
    """Copy directories, regular files and symlinks with modes, owners and
    times; leave out `skip` and device nodes, fifos and sockets."""
    st = os.lstat(src)
    os.mkdir(dest)
    for entry in os.scandir(src):
        rel_name = f"{rel}{entry.name}"
        if any(fnmatch.fnmatchcase(rel_name, pattern) for pattern in skip):
            continue
        target = os.path.join(dest, entry.name)
        est = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(est.st_mode):
            _copy_tree(entry.path, target, rel_name + "/", skip)
        elif stat.S_ISLNK(est.st_mode):
            os.symlink(os.readlink(entry.path), target)
            os.lchown(target, est.st_uid, est.st_gid)
        elif stat.S_ISREG(est.st_mode):
            shutil.copy2(entry.path, target, follow_symlinks=False)
            os.chown(target, est.st_uid, est.st_gid)
            os.chmod(target, stat.S_IMODE(est.st_mode))  # chown cleared set-uid bits
    os.chown(dest, st.st_uid, st.st_gid)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))


def _write(path: str, data: bytes, mode: int, gid: int = 0) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, 0, gid)
    os.chmod(path, mode)


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.count(":") >= 3]
    except FileNotFoundError:
        return []


def _write_shadows(etc: str) -> None:
    """Fresh shadow and gshadow: every account of passwd and group, locked
    ('*': no password login) until the VE's root sets one."""
    today = int(time.time() // 86400)
    users = [e[0] for e in _entries(os.path.join(etc, "passwd"))]
    groups = _entries(os.path.join(etc, "group"))
    gid = next((int(g[2]) for g in groups if g[0] == "shadow" and g[2].isdigit()), 0)
    shadow = "".join(f"{u}:*:{today}:0:99999:7:::\n" for u in users)
    gshadow = "".join(f"{g[0]}:*::{g[3]}\n" for g in groups)
    _write(os.path.join(etc, "shadow"), shadow.encode(), 0o640, gid)
    _write(os.path.join(etc, "gshadow"), gshadow.encode(), 0o640, gid)


def _make_var(src: str, dest: str) -> None:
    """/var without files: the host's top directories (and one level below
    lib, log, cache, spool) with their owners; run and lock point to /run."""
    _mkdir(dest, 0o755)
    for entry in os.scandir(src):
        if not entry.is_dir(follow_symlinks=False) or entry.name in ("run", "lock"):
            continue
        _copy_dir_only(entry.path, os.path.join(dest, entry.name))
        if entry.name in VAR_SKELETON:
            for sub in os.scandir(entry.path):
                if sub.is_dir(follow_symlinks=False):
                    _copy_dir_only(sub.path, os.path.join(dest, entry.name, sub.name))
    _mkdir(os.path.join(dest, "tmp"), 0o1777, exist_ok=True)
    for name in ("log", "lib", "cache", "spool"):
        _mkdir(os.path.join(dest, name), 0o755, exist_ok=True)
    os.symlink("/run", os.path.join(dest, "run"))
    os.symlink("/run/lock", os.path.join(dest, "lock"))


def _copy_dir_only(src: str, dest: str) -> None:
    st = os.lstat(src)
    os.mkdir(dest)
    os.chown(dest, st.st_uid, st.st_gid)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
