"""OpenVZ's configuration files: the global vz.conf and one VEID.conf per VE.

The format is vzctl's, a subset of the shell (OpenVZ's action scripts source these
files, so they must stay valid shell):

    # a comment            kept as is on rewrite, like blank lines
    KEY="value"            what vzctl writes, and what `set` writes
    KEY='value'  KEY=word  accepted on read
    KEY="v"  # note        a comment after the value, after white space

Inside double quotes a backslash escapes `\\ " $` and a backquote, as in the shell;
`$VEID` (or `${VEID}`) is left as written, because OpenVZ's files use it on purpose
(VE_ROOT="/vz/root/$VEID") and the path accessors substitute it. Any other `$` is
written escaped, so every value without a newline reads back exactly as it was set.
Unknown keys and their lines are kept untouched; a key set twice means its last
value (shell semantics), and `set` rewrites that last line in place.

A VE's config is read with the global one as `defaults`: `get` falls back to it,
as vzctl lets VEID.conf override vz.conf. Paths inside both files are unprefixed
OpenVZ paths; `ve_root`/`ve_private` resolve them through `Paths` (VZCPT_ROOT).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from vzcpt.errors import VzcptError
from vzcpt.ve.paths import Paths, atomic_write, quoted

PAGE_SIZE = 4096  # OpenVZ's PHYSPAGES/SWAPPAGES count x86 pages
UNLIMITED = 2**63 - 1  # vzctl writes LONG_MAX for "unlimited"
HOST_NAME_MAX = 64  # the kernel's limit for a UTS nodename

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_BARE = re.compile(r"[^\s\"'\\`$;&|<>()]*")
_VEID_REF = re.compile(r"\$(?:VEID\b|\{VEID\})")
_SIZE = re.compile(r"([0-9]+)([KMGTPB]?)", re.IGNORECASE)
_SUFFIX = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": PAGE_SIZE}
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


# --- values -------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """Bytes from vzctl's size syntax: 4096, 512M, 1G, 2T, 100P (4 KiB pages), 10B."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise VzcptError(
            f"invalid size {quoted(text)}: give bytes, or a number with a K, M, G or T"
            " suffix (P for 4 KiB pages)"
        )
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def _ubc_value(text: str, pages: bool) -> int | None:
    """One side of barrier:limit: None for unlimited, else pages (or items)."""
    if text == "unlimited":
        return None
    if text.isascii() and text.isdigit():
        n = int(text)
    elif pages:
        n = math.ceil(parse_size(text) / PAGE_SIZE)  # vzctl accepts sizes for page counts
    else:
        raise VzcptError(f"invalid count {quoted(text)}: give a number or 'unlimited'")
    return None if n >= UNLIMITED else n


def parse_barrier_limit(text: str, *, pages: bool) -> tuple[int | None, int | None]:
    """vzctl's `N`, `B:L` or `unlimited` (None) for a beancounter, in pages or items."""
    parts = text.strip().split(":")
    if len(parts) > 2 or not all(parts):
        unit = "pages or sizes" if pages else "items"
        raise VzcptError(f"invalid limit {quoted(text)}: give barrier[:limit] in {unit}")
    values = [_ubc_value(p, pages) for p in parts]
    return values[0], values[-1]  # one value sets barrier and limit alike


def _format_ubc(barrier: int | None, limit: int | None) -> str:
    def side(v: int | None) -> str:
        return "unlimited" if v is None else str(v)

    return f"{side(barrier)}:{side(limit)}"


def validate_ip(text: str, *, prefix_ok: bool = True) -> str:
    """Normalized IPv4/IPv6 address, with a /prefix when given and allowed."""
    try:
        if "/" in text and prefix_ok:
            iface = ipaddress.ip_interface(text)
            addr, shown = iface.ip, str(iface)
        else:
            addr = ipaddress.ip_address(text)
            shown = str(addr)
    except ValueError:
        form = "an IPv4 or IPv6 address" + (" with an optional /prefix" if prefix_ok else "")
        raise VzcptError(f"invalid IP address {quoted(text)}: expected {form}") from None
    if addr.is_unspecified or addr.is_multicast:
        raise VzcptError(f"invalid IP address {quoted(text)}: a VE needs a unicast address")
    return shown


def validate_hostname(name: str) -> str:
    host = name[:-1] if name.endswith(".") else name
    if (
        not host
        or len(host) > HOST_NAME_MAX
        or not all(_LABEL.fullmatch(label) for label in host.split("."))
    ):
        raise VzcptError(
            f"invalid hostname {quoted(name)}: use letters, digits and '-' in dot-separated"
            f" labels, at most {HOST_NAME_MAX} characters"
        )
    return host


def resolve_path(value: str, veid: int, paths: Paths) -> Path:
    """A config path (VE_ROOT="/vz/root/$VEID") as a real path under VZCPT_ROOT."""
    return paths.host(_VEID_REF.sub(str(veid), value))


# --- the file format ----------------------------------------------------------------


def _unquote(rest: str) -> tuple[str, str]:
    """Split the text after `KEY=` into (value, what follows it); ValueError if bad."""
    if rest.startswith('"'):
        out: list[str] = []
        i = 1
        while i < len(rest):
            c = rest[i]
            if c == "\\" and i + 1 < len(rest):
                nxt = rest[i + 1]
                # Shell rule: inside "" a backslash escapes only these characters.
                out.append(nxt if nxt in '\\"$`' else c + nxt)
                i += 2
            elif c == '"':
                return "".join(out), rest[i + 1 :]
            else:
                out.append(c)
                i += 1
        raise ValueError("unterminated double quote")
    if rest.startswith("'"):
        end = rest.find("'", 1)
        if end < 0:
            raise ValueError("unterminated single quote")
        return rest[1:end], rest[end + 1 :]
    m = _BARE.match(rest)
    assert m is not None  # the pattern matches the empty string
    return m.group(), rest[m.end() :]


def _parse_line(line: str) -> tuple[str, str] | None:
    """(key, value) of an assignment, None for a blank or comment line."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    m = _ASSIGN.fullmatch(line)
    if m is None:
        raise ValueError('expected KEY="value"')
    value, tail = _unquote(m.group(2))
    rest = tail.strip()
    # A comment needs white space before it: in the shell "a"#b is the word a#b.
    if rest and not (tail[0].isspace() and rest.startswith("#")):
        raise ValueError("unexpected text after the value (put the value in double quotes)")
    return m.group(1), value


def _quote_value(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        ref = _VEID_REF.match(value, i) if c == "$" else None
        if ref is not None:
            out.append(ref.group())  # keep OpenVZ's $VEID a variable, as vzctl writes it
            i = ref.end()
            continue
        out.append("\\" + c if c in '\\"$`' else c)
        i += 1
    return '"' + "".join(out) + '"'


@dataclass
class _Line:
    raw: str
    key: str | None = None
    value: str | None = None


class VeConfig:
    """One OpenVZ config file, edited in place: comments, order and unknown keys kept."""

    def __init__(
        self,
        *,
        path: Path | None = None,
        source: str | None = None,
        defaults: VeConfig | None = None,
    ) -> None:
        self.path = path
        self.source = source or (str(path) if path is not None else "<config>")
        self.defaults = defaults
        self._lines: list[_Line] = []

    # --- reading and writing --------------------------------------------------------

    @classmethod
    def parse(
        cls, text: str, source: str = "<config>", *, defaults: VeConfig | None = None
    ) -> VeConfig:
        cfg = cls(source=source, defaults=defaults)
        # split("\n"), not splitlines(): that would also break lines at \f, \x1c, U+2028...
        raws = text.split("\n")
        if raws[-1] == "":
            raws.pop()
        for lineno, raw in enumerate(raws, 1):
            try:
                kv = _parse_line(raw)
            except ValueError as e:
                shown = quoted(raw if len(raw) <= 60 else raw[:57] + "...")
                raise VzcptError(f"{source}:{lineno}: malformed line {shown}: {e}") from None
            cfg._lines.append(_Line(raw, *kv) if kv else _Line(raw))
        return cfg

    @classmethod
    def load(cls, path: Path | str, *, defaults: VeConfig | None = None) -> VeConfig:
        path = Path(path)
        try:
            # surrogateescape: bytes that are not UTF-8 survive a rewrite untouched.
            text = path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as e:
            raise VzcptError(f"cannot read config {path}: {e.strerror}") from None
        cfg = cls.parse(text, str(path), defaults=defaults)
        cfg.path = path
        return cfg

    def dumps(self) -> str:
        return "".join(line.raw + "\n" for line in self._lines)

    def save(self, path: Path | str | None = None) -> None:
        """Write atomically (temporary file + rename), mode 0644, to `path` or where loaded."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("VeConfig.save: no path given and none loaded")
        try:
            atomic_write(target, self.dumps().encode("utf-8", "surrogateescape"), 0o644)
        except OSError as e:
            raise VzcptError(f"cannot write config {target}: {e.strerror}") from None
        self.path = target

    # --- generic access -------------------------------------------------------------

    def _last(self, key: str) -> _Line | None:
        for line in reversed(self._lines):
            if line.key == key:
                return line
        return None

    def __contains__(self, key: object) -> bool:
        """Whether this file itself sets `key` (defaults not consulted)."""
        return any(line.key == key for line in self._lines)

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str) -> str: ...
    def get(self, key: str, default: str | None = None) -> str | None:
        line = self._last(key)
        if line is not None:
            return line.value
        inherited = self.defaults.get(key) if self.defaults is not None else None
        return default if inherited is None else inherited

    def set(self, key: str, value: str) -> None:
        if not _KEY.fullmatch(key):
            raise VzcptError(f"invalid config key {quoted(key)}: use letters, digits and _")
        if "\n" in value or "\r" in value or "\0" in value:
            raise VzcptError(f"value of {key} has a line break or NUL: config values are one line")
        raw = f"{key}={_quote_value(value)}"
        line = self._last(key)
        if line is None:
            self._lines.append(_Line(raw, key, value))
        else:
            line.raw, line.value = raw, value

    def remove(self, key: str) -> bool:
        """Drop every line setting `key`; True if there was one."""
        before = len(self._lines)
        self._lines = [line for line in self._lines if line.key != key]
        return len(self._lines) != before

    def keys(self) -> list[str]:
        """Keys this file sets, in file order, each once."""
        return list(dict.fromkeys(line.key for line in self._lines if line.key is not None))

    def as_dict(self) -> dict[str, str]:
        """Effective values: the defaults, overridden by this file."""
        merged = self.defaults.as_dict() if self.defaults is not None else {}
        for line in self._lines:
            if line.key is not None and line.value is not None:
                merged[line.key] = line.value
        return merged

    def _bad(self, key: str, value: str, expected: str) -> VzcptError:
        return VzcptError(f"{self.source}: {key}={quoted(value)} is invalid: expected {expected}")

    # --- what vzctl uses ------------------------------------------------------------

    @property
    def hostname(self) -> str | None:
        return self.get("HOSTNAME") or None

    @hostname.setter
    def hostname(self, name: str | None) -> None:
        if name is None:
            self.remove("HOSTNAME")
        else:
            self.set("HOSTNAME", validate_hostname(name))

    @property
    def ip_addresses(self) -> list[str]:
        """IP_ADDRESS: normalized addresses, each possibly with a /prefix."""
        out = []
        for tok in self.get("IP_ADDRESS", "").split():
            try:
                out.append(validate_ip(tok))
            except VzcptError as e:
                raise VzcptError(f"{self.source}: IP_ADDRESS: {e}") from None
        return out

    @ip_addresses.setter
    def ip_addresses(self, addrs: list[str]) -> None:
        self.set("IP_ADDRESS", " ".join(dict.fromkeys(validate_ip(a) for a in addrs)))

    def add_ip(self, addr: str) -> str:
        """vzctl --ipadd: append, or replace the entry with the same address (new prefix)."""
        new = validate_ip(addr)
        ip = new.split("/")[0]
        addrs = self.ip_addresses
        for i, old in enumerate(addrs):
            if old.split("/")[0] == ip:
                addrs[i] = new
                break
        else:
            addrs.append(new)
        self.ip_addresses = addrs
        return new

    def del_ip(self, addr: str) -> None:
        """vzctl --ipdel ADDR|all."""
        if addr == "all":
            self.ip_addresses = []
            return
        ip = validate_ip(addr).split("/")[0]
        addrs = self.ip_addresses
        kept = [a for a in addrs if a.split("/")[0] != ip]
        if len(kept) == len(addrs):
            raise VzcptError(f"IP address {ip} is not assigned to this VE ({self.source})")
        self.ip_addresses = kept

    @property
    def nameservers(self) -> list[str]:
        try:
            return [validate_ip(t, prefix_ok=False) for t in self.get("NAMESERVER", "").split()]
        except VzcptError as e:
            raise VzcptError(f"{self.source}: NAMESERVER: {e}") from None

    @nameservers.setter
    def nameservers(self, addrs: list[str]) -> None:
        valid = [validate_ip(a, prefix_ok=False) for a in addrs]
        self.set("NAMESERVER", " ".join(dict.fromkeys(valid)))

    @property
    def ostemplate(self) -> str | None:
        return self.get("OSTEMPLATE") or None

    @ostemplate.setter
    def ostemplate(self, name: str | None) -> None:
        if name is None:
            self.remove("OSTEMPLATE")
        else:
            self.set("OSTEMPLATE", name)

    def _pair(self, key: str, pages: bool) -> tuple[int | None, int | None] | None:
        value = self.get(key)
        if not value:
            return None
        try:
            return parse_barrier_limit(value, pages=pages)
        except VzcptError:
            unit = "pages" if pages else "items"
            raise self._bad(key, value, f"barrier:limit in {unit} or 'unlimited'") from None

    def _bytes(self, key: str) -> int | None:
        pair = self._pair(key, pages=True)
        return None if pair is None or pair[1] is None else pair[1] * PAGE_SIZE

    def _set_bytes(self, key: str, nbytes: int | None, minimum: int) -> None:
        if nbytes is None:
            self.remove(key)
            return
        if nbytes < minimum:
            raise VzcptError(f"{key}: {nbytes} bytes is too small (at least {minimum})")
        # vzctl --ram/--swap: barrier 0, limit rounded up to whole pages.
        self.set(key, _format_ubc(0, math.ceil(nbytes / PAGE_SIZE)))

    @property
    def ram_bytes(self) -> int | None:
        """PHYSPAGES' limit in bytes; None when unset or unlimited."""
        return self._bytes("PHYSPAGES")

    @ram_bytes.setter
    def ram_bytes(self, nbytes: int | None) -> None:
        self._set_bytes("PHYSPAGES", nbytes, PAGE_SIZE)

    @property
    def swap_bytes(self) -> int | None:
        """SWAPPAGES' limit in bytes; None when unset or unlimited (0 means no swap)."""
        return self._bytes("SWAPPAGES")

    @swap_bytes.setter
    def swap_bytes(self, nbytes: int | None) -> None:
        self._set_bytes("SWAPPAGES", nbytes, 0)

    @property
    def cpus(self) -> int | None:
        value = self.get("CPUS")
        if not value or value == "unlimited":
            return None
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise self._bad("CPUS", value, "a number of CPUs or 'unlimited'")
        return int(value)

    @cpus.setter
    def cpus(self, n: int | None) -> None:
        if n is None:
            self.remove("CPUS")
        elif n < 1:
            raise VzcptError(f"CPUS: {n} is not a number of CPUs (at least 1)")
        else:
            self.set("CPUS", str(n))

    @property
    def numproc(self) -> int | None:
        """NUMPROC's limit (processes and threads); None when unset or unlimited."""
        pair = self._pair("NUMPROC", pages=False)
        return None if pair is None else pair[1]

    @numproc.setter
    def numproc(self, n: int | None) -> None:
        if n is None:
            self.remove("NUMPROC")
        elif n < 1:
            raise VzcptError(f"NUMPROC: {n} is too small (at least 1)")
        else:
            self.set("NUMPROC", _format_ubc(n, n))

    def set_numproc(self, text: str) -> None:
        """vzctl --numproc items[:items] | unlimited."""
        self.set("NUMPROC", _format_ubc(*parse_barrier_limit(text, pages=False)))

    @property
    def onboot(self) -> bool:
        value = self.get("ONBOOT", "no")
        if value not in ("yes", "no", ""):
            raise self._bad("ONBOOT", value, "yes or no")
        return value == "yes"

    @onboot.setter
    def onboot(self, on: bool) -> None:
        self.set("ONBOOT", "yes" if on else "no")

    def _path(self, key: str, veid: int, paths: Paths, fallback: Path) -> Path:
        value = self.get(key)
        if not value:
            return fallback
        try:
            return resolve_path(value, veid, paths)
        except VzcptError:
            raise self._bad(key, value, "an absolute path (may use $VEID)") from None

    def ve_root(self, veid: int, paths: Paths) -> Path:
        """VE_ROOT with $VEID substituted, under VZCPT_ROOT: where the root fs is mounted."""
        return self._path("VE_ROOT", veid, paths, paths.ve_root(veid))

    def ve_private(self, veid: int, paths: Paths) -> Path:
        """VE_PRIVATE with $VEID substituted, under VZCPT_ROOT: the VE's own files."""
        return self._path("VE_PRIVATE", veid, paths, paths.private(veid))

    def dump_dir(self, paths: Paths) -> Path:
        """DUMPDIR (vz.conf), under VZCPT_ROOT."""
        return self._path("DUMPDIR", 0, paths, paths.dump_dir)

    def template_dir(self, paths: Paths) -> Path:
        """TEMPLATE (vz.conf), under VZCPT_ROOT."""
        return self._path("TEMPLATE", 0, paths, paths.template_dir)


# --- the global file and a VE's file ------------------------------------------------


def default_global_conf() -> str:
    """The vz.conf a fresh host starts with (paths unprefixed, as OpenVZ writes them)."""
    return """\
## Global parameters of vzcpt's VEs, in OpenVZ's vz.conf format.
## A VE's own /etc/vz/conf/VEID.conf overrides any of these.
## Paths are host paths; when VZCPT_ROOT is set they are taken under it
## (VZCPT_ROOT=/tmp/h1 puts VE_ROOT in /tmp/h1/vz/root/VEID).

## Where VEs live; $VEID stands for the VE's number.
VE_ROOT="/vz/root/$VEID"
VE_PRIVATE="/vz/private/$VEID"

## OS templates (tarballs and the debootstrap cache) and checkpoint dumps.
TEMPLATE="/vz/template"
DUMPDIR="/vz/dump"

## Template for "vzctl create" without --ostemplate: vzcpt-host is made from
## the host's own system (read-only system directories), needs no network.
DEF_OSTEMPLATE="vzcpt-host"

## Networking
IPV6="yes"

## Messages: 0 normal, higher is more verbose.
VERBOSE="0"
"""


def load_global(paths: Paths) -> VeConfig:
    """vz.conf, or the built-in defaults (not written) when the host has none yet."""
    if paths.global_conf.exists():
        return VeConfig.load(paths.global_conf)
    cfg = VeConfig.parse(default_global_conf(), f"{paths.global_conf} (built-in defaults)")
    cfg.path = paths.global_conf
    return cfg


def load_ve(paths: Paths, veid: int, *, missing_ok: bool = False) -> VeConfig:
    """VEID.conf layered over vz.conf; an empty one to fill in if missing and allowed."""
    defaults = load_global(paths)
    path = paths.ve_conf(veid)
    if path.exists():
        return VeConfig.load(path, defaults=defaults)
    if not missing_ok:
        raise VzcptError(f"VE {veid} has no config {path}: create it first (vzctl create {veid})")
    return VeConfig(path=path, defaults=defaults)
