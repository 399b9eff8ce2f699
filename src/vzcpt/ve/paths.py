"""Where OpenVZ keeps a VE's files, under an optional prefix, and how to write them safely.

The layout is OpenVZ's: /etc/vz/vz.conf, /etc/vz/conf/VEID.conf, /vz/private/VEID,
/vz/root/VEID, /vz/dump/Dump.VEID and /vz/template; vzcpt adds its state files in
/var/lib/vzcpt and its locks in /var/lock/vzcpt. The environment variable VZCPT_ROOT
prefixes every one of them, so tests (and two simulated hosts on one machine) each
get a tree of their own and never touch the real /etc/vz or /vz.

Paths written inside config files (VE_ROOT="/vz/root/$VEID") stay unprefixed, as
OpenVZ writes them: they name a place in the "host" the prefix stands for, and
`Paths.host()` maps them to the real file system. A config copied from one
prefixed host to another therefore still means the same thing there.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vzcpt.errors import VzcptError

VEID_MAX = 2**31 - 1  # OpenVZ's envid_t is a signed 32-bit number; 0 is the host
_DIGITS = re.compile(r"[0-9]+")


def quoted(text: str) -> str:
    """`text` in single quotes for an error message, escaped to stay on one line."""
    # Keep the error on one line even for input with newlines or control bytes.
    shown = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return f"'{shown}'"


def validate_veid(text: str) -> int:
    """Parse a VEID given by a user: decimal digits only, 1..2147483647."""
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= VEID_MAX:
        raise VzcptError(f"invalid VEID {quoted(text)}: a VEID is a number from 1 to {VEID_MAX}")
    return int(text)


def check_veid(veid: int) -> int:
    """Refuse an out-of-range VEID given as a number (a bug upstream, or bad data)."""
    if isinstance(veid, bool) or not isinstance(veid, int) or not 1 <= veid <= VEID_MAX:
        raise VzcptError(
            f"invalid VEID {quoted(str(veid))}: a VEID is a number from 1 to {VEID_MAX}"
        )
    return veid


@dataclass(frozen=True)
class Paths:
    """OpenVZ's file layout under `root` ("" for the real host)."""

    root: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        raw = env.get("VZCPT_ROOT", "")
        if not raw:
            return cls("")
        # Absolute, because commands chdir (into a VE root, for one) after this.
        root = os.path.normpath(os.path.abspath(raw))
        return cls("" if root == "/" else root)

    def host(self, path: str) -> Path:
        """Map an absolute OpenVZ path (as written in a config) to the real file system."""
        if not path.startswith("/"):
            raise VzcptError(f"path {quoted(path)} is not absolute: OpenVZ paths start with /")
        # normpath before prefixing so "/../etc" cannot climb out of the prefix.
        return Path(self.root + os.path.normpath("/" + path.lstrip("/")))

    @property
    def global_conf(self) -> Path:
        return self.host("/etc/vz/vz.conf")

    @property
    def conf_dir(self) -> Path:
        return self.host("/etc/vz/conf")

    @property
    def dump_dir(self) -> Path:
        return self.host("/vz/dump")

    @property
    def template_dir(self) -> Path:
        return self.host("/vz/template")

    @property
    def state_dir(self) -> Path:
        return self.host("/var/lib/vzcpt")

    @property
    def lock_dir(self) -> Path:
        return self.host("/var/lock/vzcpt")

    def private(self, veid: int) -> Path:
        return self.host(f"/vz/private/{check_veid(veid)}")

    def ve_root(self, veid: int) -> Path:
        return self.host(f"/vz/root/{check_veid(veid)}")

    def default_dumpfile(self, veid: int) -> Path:
        return self.dump_dir / f"Dump.{check_veid(veid)}"

    def ve_conf(self, veid: int) -> Path:
        return self.conf_dir / f"{check_veid(veid)}.conf"

    def state_file(self, veid: int) -> Path:
        return self.state_dir / f"{check_veid(veid)}.state"

    def lock_file(self, veid: int) -> Path:
        return self.lock_dir / f"{check_veid(veid)}.lck"


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never half.

    Written to a temporary file in the same directory, flushed to disk, then renamed
    over the target; the directory is synced so the rename survives a crash too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp creates 0600 whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
