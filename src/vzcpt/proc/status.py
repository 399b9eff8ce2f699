"""Parser for /proc/PID/status (fs/proc/array.c).

Lines are "Key:\\tvalue".  Keys added by later kernels (Umask 4.7, NStgid...
4.1, NoNewPrivs 4.10, CapAmb 4.3) may be missing: they read as None, 0 or ().
`Name` is escaped by the kernel (a backslash and a newline only, as
backslash-backslash and backslash-n); /proc/PID/stat has the raw comm.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStatus:
    name: str
    umask: int | None
    state: str  # one char: R, S, D, T, t, Z, X, I
    tgid: int
    pid: int
    ppid: int
    tracer_pid: int
    uid: tuple[int, int, int, int]  # real, effective, saved, fs
    gid: tuple[int, int, int, int]
    groups: tuple[int, ...]
    ns_tgid: tuple[int, ...]  # outermost pid namespace first
    ns_pid: tuple[int, ...]
    ns_pgid: tuple[int, ...]
    ns_sid: tuple[int, ...]
    threads: int
    sig_pending: int
    shd_pending: int
    sig_blocked: int
    sig_ignored: int
    sig_caught: int
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    no_new_privs: int
    seccomp: int
    rss_anon: int = 0  # bytes of resident anonymous memory (RssAnon); 0 without an mm


_ESCAPES = {"n": "\n", "\\": "\\", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_ESCAPES |= {"e": "\x1b", '"': '"'}


def _unescape(s: str) -> str:
    out = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in _ESCAPES:
            out.append(_ESCAPES[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _ids(value: str) -> tuple[int, ...]:
    return tuple(int(x) for x in value.split())


def _id4(value: str) -> tuple[int, int, int, int]:
    a, b, c, d = _ids(value)
    return (a, b, c, d)


def parse_status(data: bytes) -> ProcStatus:
    """The fields of one /proc/PID/status."""
    raw: dict[str, str] = {}
    for line in data.decode(errors="surrogateescape").split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            raw[key] = value
    missing = {"Name", "State", "Tgid", "Pid", "PPid", "Uid", "Gid"} - raw.keys()
    if missing:
        raise ValueError(f"status lacks {', '.join(sorted(missing))}")
    kv = {k: v.strip() for k, v in raw.items()}

    def dec(key: str) -> int:
        return int(kv[key]) if key in kv else 0

    def hex_(key: str) -> int:
        return int(kv[key], 16) if key in kv else 0

    return ProcStatus(
        # The name may start or end with blanks: drop only the separator tab.
        name=_unescape(raw["Name"].removeprefix("\t")),
        umask=int(kv["Umask"], 8) if "Umask" in kv else None,
        state=kv["State"][:1],
        tgid=int(kv["Tgid"]),
        pid=int(kv["Pid"]),
        ppid=int(kv["PPid"]),
        tracer_pid=dec("TracerPid"),
        uid=_id4(kv["Uid"]),
        gid=_id4(kv["Gid"]),
        groups=_ids(kv.get("Groups", "")),
        ns_tgid=_ids(kv.get("NStgid", "")),
        ns_pid=_ids(kv.get("NSpid", "")),
        ns_pgid=_ids(kv.get("NSpgid", "")),
        ns_sid=_ids(kv.get("NSsid", "")),
        threads=dec("Threads"),
        sig_pending=hex_("SigPnd"),
        shd_pending=hex_("ShdPnd"),
        sig_blocked=hex_("SigBlk"),
        sig_ignored=hex_("SigIgn"),
        sig_caught=hex_("SigCgt"),
        cap_inh=hex_("CapInh"),
        cap_prm=hex_("CapPrm"),
        cap_eff=hex_("CapEff"),
        cap_bnd=hex_("CapBnd"),
        cap_amb=hex_("CapAmb"),
        no_new_privs=dec("NoNewPrivs"),
        seccomp=dec("Seccomp"),
        rss_anon=int(kv["RssAnon"].split()[0]) * 1024 if "RssAnon" in kv else 0,
    )


@dataclass(frozen=True)
class InnerIds:
    """A task's ids in its own (innermost) pid namespace; 0 where they lie outside it."""

    pid: int
    pgid: int
    sid: int


def namespace_ids(data: bytes) -> InnerIds:
    """The innermost of NSpid, NSpgid and NSsid of /proc/PID[/task/TID]/status."""
    st = parse_status(data)
    return InnerIds(
        pid=st.ns_pid[-1] if st.ns_pid else st.pid,
        pgid=st.ns_pgid[-1] if st.ns_pgid else 0,
        sid=st.ns_sid[-1] if st.ns_sid else 0,
    )
