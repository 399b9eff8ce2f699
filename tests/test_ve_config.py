"""VE paths and OpenVZ config files: layout under VZCPT_ROOT, VEIDs, format, accessors."""

from __future__ import annotations

import os
import random
import re
import stat
import subprocess
from pathlib import Path

import pytest

from vzcpt.errors import VzcptError
from vzcpt.ve.config import (
    PAGE_SIZE,
    VeConfig,
    default_global_conf,
    load_global,
    load_ve,
    parse_barrier_limit,
    parse_size,
    validate_hostname,
    validate_ip,
)
from vzcpt.ve.paths import Paths, check_veid, validate_veid

# --- VEIDs and paths ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "veid"), [("1", 1), ("101", 101), ("2147483647", 2**31 - 1)])
def test_veid_accepted(text: str, veid: int) -> None:
    assert validate_veid(text) == veid


@pytest.mark.parametrize(
    "text",
    ["0", "-1", "2147483648", "abc", "101 ", " 101", "", "+5", "1_0", "1e3", "0x10", "١٠١", "10\n"],
)
def test_veid_rejected(text: str) -> None:
    with pytest.raises(VzcptError) as ei:
        validate_veid(text)
    msg = str(ei.value)
    assert msg.startswith("invalid VEID '")
    assert msg.endswith("': a VEID is a number from 1 to 2147483647")
    assert "\n" not in msg


def test_veid_message_exact() -> None:
    with pytest.raises(VzcptError, match=r"^invalid VEID 'abc': a VEID is a number from 1 to "):
        validate_veid("abc")


@pytest.mark.parametrize("veid", [0, -1, 2**31, True])
def test_paths_refuse_bad_veid_numbers(veid: int) -> None:
    with pytest.raises(VzcptError, match="invalid VEID"):
        check_veid(veid)
    with pytest.raises(VzcptError, match="invalid VEID"):
        Paths("/tmp/nowhere").private(veid)


def test_paths_default_layout_is_openvz() -> None:
    p = Paths.from_env({})
    assert p.root == ""
    assert p.global_conf == Path("/etc/vz/vz.conf")
    assert p.conf_dir == Path("/etc/vz/conf")
    assert p.ve_conf(101) == Path("/etc/vz/conf/101.conf")
    assert p.private(101) == Path("/vz/private/101")
    assert p.ve_root(101) == Path("/vz/root/101")
    assert p.dump_dir == Path("/vz/dump")
    assert p.default_dumpfile(101) == Path("/vz/dump/Dump.101")
    assert p.template_dir == Path("/vz/template")
    assert p.state_file(101) == Path("/var/lib/vzcpt/101.state")
    assert p.lock_file(101) == Path("/var/lock/vzcpt/101.lck")


def test_paths_prefixed_by_vzcpt_root(tmp_path: Path) -> None:
    p = Paths.from_env({"VZCPT_ROOT": str(tmp_path) + "/"})
    assert p.root == str(tmp_path)
    assert p.private(7) == tmp_path / "vz/private/7"
    assert p.default_dumpfile(7) == tmp_path / "vz/dump/Dump.7"
    assert p.lock_file(7) == tmp_path / "var/lock/vzcpt/7.lck"
    # ".." in a config path cannot climb out of the prefix
    assert p.host("/vz/../../../etc/passwd") == tmp_path / "etc/passwd"
    with pytest.raises(VzcptError, match="not absolute"):
        p.host("vz/root")


def test_paths_from_real_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VZCPT_ROOT", "host1")  # relative: made absolute at once
    assert Paths.from_env().root == str(tmp_path / "host1")
    monkeypatch.setenv("VZCPT_ROOT", "/")
    assert Paths.from_env().root == ""


# --- sizes and limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("4096", 4096),
        ("0", 0),
        ("512M", 512 << 20),
        ("512m", 512 << 20),
        ("1G", 1 << 30),
        ("2T", 2 << 40),
        ("64K", 64 << 10),
        ("10B", 10),
        ("100P", 100 * PAGE_SIZE),
        (" 1G ", 1 << 30),
    ],
)
def test_parse_size(text: str, nbytes: int) -> None:
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1G", "1X", "1 G", "1GB", "ten"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(VzcptError, match=r"^invalid size '.*': give bytes, or a number with"):
        parse_size(text)


def test_parse_barrier_limit() -> None:
    assert parse_barrier_limit("100", pages=False) == (100, 100)
    assert parse_barrier_limit("80:100", pages=False) == (80, 100)
    assert parse_barrier_limit("0:unlimited", pages=True) == (0, None)
    assert parse_barrier_limit("0:1G", pages=True) == (0, (1 << 30) // PAGE_SIZE)
    assert parse_barrier_limit("0:9223372036854775807", pages=True) == (0, None)
    for bad in ["", ":", "1:2:3", "1:", "1G"]:
        with pytest.raises(VzcptError):
            parse_barrier_limit(bad, pages=False)


# --- the file format ----------------------------------------------------------------

SAMPLE = """\
# Configuration of VE 101, written by hand
ONBOOT="yes"

## Resources
PHYSPAGES="0:262144"
SWAPPAGES='0:65536'   # single quotes are shell too
NUMPROC=100:100
VE_ROOT="/vz/root/$VEID"
VE_PRIVATE="/vz/private/$VEID"
OSTEMPLATE="debian-12-x86_64"
HOSTNAME="ve101.example.org"
IP_ADDRESS="10.77.0.2 fd77::2/64"
NAMESERVER="10.77.0.1"
SOME_FUTURE_KEY="kept as is"   # and its comment
CPUS="2"
"""


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "101.conf"
    path.write_text(SAMPLE)
    cfg = VeConfig.load(path)
    assert cfg.dumps() == SAMPLE
    cfg.save()
    assert path.read_text() == SAMPLE


def test_set_rewrites_one_line_only(tmp_path: Path) -> None:
    cfg = VeConfig.parse(SAMPLE, "101.conf")
    cfg.hostname = "other"
    cfg.set("NEW_KEY", "new")
    expected = SAMPLE.replace('HOSTNAME="ve101.example.org"', 'HOSTNAME="other"')
    assert cfg.dumps() == expected + 'NEW_KEY="new"\n'
    assert cfg.remove("SOME_FUTURE_KEY")
    assert not cfg.remove("SOME_FUTURE_KEY")
    assert "SOME_FUTURE_KEY" not in cfg.dumps()
    assert "# and its comment" not in cfg.dumps()  # the comment was on that line
    assert "# Configuration of VE 101, written by hand" in cfg.dumps()


def test_read_forms() -> None:
    cfg = VeConfig.parse(
        'A="x y"\nB=\'it\\s "raw"\'\nC=word\nD=\nE=""  # empty\n  F="indented"\nG="a#b"\nA="last"\n'
    )
    assert cfg.get("A") == "last"  # the shell's rule: the last assignment wins
    assert cfg.get("B") == 'it\\s "raw"'
    assert cfg.get("C") == "word"
    assert cfg.get("D") == ""
    assert cfg.get("E") == ""
    assert cfg.get("F") == "indented"
    assert cfg.get("G") == "a#b"
    assert cfg.get("MISSING") is None
    assert cfg.get("MISSING", "dflt") == "dflt"
    assert cfg.keys() == ["A", "B", "C", "D", "E", "F", "G"]
    cfg.set("A", "new")
    assert cfg.dumps().startswith('A="x y"\n')  # the overriding (last) line is the one set
    assert cfg.dumps().endswith('A="new"\n')
    cfg.remove("A")
    assert cfg.get("A") is None


TRICKY = [
    'say "hi"',
    "back\\slash",
    "trailing\\",
    "\\",
    '\\"',
    "$HOME and ${HOME}",
    "cost: $5",
    "$",
    "`uname`",
    "/vz/root/$VEID",
    "/vz/root/${VEID}",
    "$VEIDX",
    "$VEID_X",
    "\\$VEID",
    "'single'",
    "tab\there",
    "  spaces  ",
    "# not a comment",
    "ünïcødé",
    "",
]


@pytest.mark.parametrize("value", TRICKY)
def test_quoting_round_trips(value: str, tmp_path: Path) -> None:
    cfg = VeConfig()
    cfg.set("V", value)
    assert VeConfig.parse(cfg.dumps()).get("V") == value
    cfg.save(tmp_path / "x.conf")
    assert VeConfig.load(tmp_path / "x.conf").get("V") == value


def test_quoting_round_trips_random() -> None:
    rng = random.Random(1234)
    alphabet = "ab $\\\"'`{}#=:/VEID_\t;&|<>()!*?~é"
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        cfg = VeConfig()
        cfg.set("K", value)
        assert VeConfig.parse(cfg.dumps()).get("K") == value, cfg.dumps()


def test_written_file_is_valid_shell(tmp_path: Path) -> None:
    # OpenVZ's action scripts source these files: the shell must read our values,
    # with $VEID being the one variable meant to expand.
    cfg = VeConfig()
    values = {f"K{i}": v for i, v in enumerate(TRICKY)}
    for key, value in values.items():
        cfg.set(key, value)
    path = tmp_path / "x.conf"
    cfg.save(path)
    script = f'. "{path}"; ' + "; ".join(f'printf "%s\\0" "${k}"' for k in values)
    out = subprocess.run(
        ["bash", "-c", script], env={"VEID": "101"}, capture_output=True, check=True
    ).stdout.decode()
    got = out.split("\0")[:-1]
    # the shell expands exactly the $VEID references vzctl itself substitutes
    assert got == [re.sub(r"\$(?:VEID\b|\{VEID\})", "101", v) for v in values.values()]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("JUSTAWORD", 'expected KEY="value"'),
        ("KEY = value", 'expected KEY="value"'),
        ("1KEY=x", 'expected KEY="value"'),
        ('KEY="unterminated', "unterminated double quote"),
        ("KEY='unterminated", "unterminated single quote"),
        ("KEY=two words", "unexpected text after the value"),
        ('KEY="a"b', "unexpected text after the value"),
        ('KEY="a"#b', "unexpected text after the value"),
        ("KEY=$HOME", "unexpected text after the value"),
        ('export KEY="x"', 'expected KEY="value"'),
    ],
)
def test_malformed_line(line: str, why: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(f'# header\nGOOD="1"\n{line}\nAFTER="2"\n')
    with pytest.raises(VzcptError) as ei:
        VeConfig.load(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:3: malformed line ")
    assert why in msg
    assert "\n" not in msg


def test_bad_keys_and_values_refused() -> None:
    cfg = VeConfig()
    for key in ["", "1A", "A-B", "A B", "A=B"]:
        with pytest.raises(VzcptError, match="invalid config key"):
            cfg.set(key, "x")
    for value in ["two\nlines", "cr\r", "nul\0"]:
        with pytest.raises(VzcptError, match="config values are one line"):
            cfg.set("K", value)


def test_non_utf8_bytes_survive(tmp_path: Path) -> None:
    path = tmp_path / "x.conf"
    data = b'# caf\xe9 in latin-1\nNAME="\xff\xfe"\n'
    path.write_bytes(data)
    cfg = VeConfig.load(path)
    cfg.save()
    assert path.read_bytes() == data


def test_save_is_atomic_and_0644(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        cfg = VeConfig()
        cfg.set("A", "1")
        target = tmp_path / "etc/vz/conf/101.conf"  # parents created
        cfg.save(target)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["101.conf"]  # no temporary file left
    inode = target.stat().st_ino
    cfg.set("A", "2")
    cfg.save()
    assert target.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert VeConfig.load(target).get("A") == "2"


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VzcptError, match=r"cannot read config .*nope\.conf: No such file"):
        VeConfig.load(tmp_path / "nope.conf")
    with pytest.raises(ValueError):
        VeConfig().save()  # no path: a bug in the caller, not a user error


# --- typed accessors ----------------------------------------------------------------


def test_sample_accessors() -> None:
    cfg = VeConfig.parse(SAMPLE, "101.conf")
    assert cfg.onboot is True
    assert cfg.ram_bytes == 1 << 30
    assert cfg.swap_bytes == 256 << 20
    assert cfg.numproc == 100
    assert cfg.cpus == 2
    assert cfg.ostemplate == "debian-12-x86_64"
    assert cfg.hostname == "ve101.example.org"
    assert cfg.ip_addresses == ["10.77.0.2", "fd77::2/64"]
    assert cfg.nameservers == ["10.77.0.1"]


def test_empty_accessors() -> None:
    cfg = VeConfig()
    assert cfg.hostname is None
    assert cfg.ip_addresses == []
    assert cfg.nameservers == []
    assert cfg.ostemplate is None
    assert cfg.ram_bytes is None
    assert cfg.swap_bytes is None
    assert cfg.cpus is None
    assert cfg.numproc is None
    assert cfg.onboot is False


def test_memory_setters_write_pages() -> None:
    cfg = VeConfig()
    cfg.ram_bytes = parse_size("512M")
    cfg.swap_bytes = parse_size("1G")
    assert cfg.get("PHYSPAGES") == "0:131072"
    assert cfg.get("SWAPPAGES") == "0:262144"
    cfg.ram_bytes = 5000  # rounded up to whole pages
    assert cfg.get("PHYSPAGES") == "0:2"
    assert cfg.ram_bytes == 2 * PAGE_SIZE
    cfg.swap_bytes = 0
    assert cfg.swap_bytes == 0
    with pytest.raises(VzcptError, match="too small"):
        cfg.ram_bytes = 0
    cfg.ram_bytes = None
    assert "PHYSPAGES" not in cfg
    cfg.set("PHYSPAGES", "0:unlimited")
    assert cfg.ram_bytes is None
    cfg.set("PHYSPAGES", "0:2G")  # vzctl accepts sizes where pages are counted
    assert cfg.ram_bytes == 2 << 30
    cfg.set("PHYSPAGES", "lots")
    with pytest.raises(VzcptError, match=r"^x\.conf: PHYSPAGES='lots' is invalid: expected"):
        VeConfig.parse(cfg.dumps(), "x.conf").ram_bytes  # noqa: B018


def test_cpus_numproc_onboot() -> None:
    cfg = VeConfig()
    cfg.cpus = 4
    assert cfg.get("CPUS") == "4"
    with pytest.raises(VzcptError):
        cfg.cpus = 0
    cfg.set("CPUS", "two")
    with pytest.raises(VzcptError, match="CPUS='two' is invalid"):
        cfg.cpus  # noqa: B018
    cfg.numproc = 50
    assert cfg.get("NUMPROC") == "50:50"
    cfg.set_numproc("80:100")
    assert (cfg.get("NUMPROC"), cfg.numproc) == ("80:100", 100)
    cfg.set_numproc("unlimited")
    assert cfg.get("NUMPROC") == "unlimited:unlimited"
    assert VeConfig.parse(cfg.dumps()).numproc is None
    with pytest.raises(VzcptError):
        cfg.set_numproc("1M")  # items take no size suffix
    cfg.onboot = True
    assert cfg.get("ONBOOT") == "yes"
    cfg.set("ONBOOT", "maybe")
    with pytest.raises(VzcptError, match="yes or no"):
        cfg.onboot  # noqa: B018


def test_hostname() -> None:
    assert validate_hostname("ve101") == "ve101"
    assert validate_hostname("a-b.example.org.") == "a-b.example.org"
    for bad in ["", "-a", "a-", "a..b", "a b", "a_b", "x" * 65, "é"]:
        with pytest.raises(VzcptError, match="invalid hostname"):
            validate_hostname(bad)
    cfg = VeConfig()
    cfg.hostname = "web"
    assert cfg.get("HOSTNAME") == "web"
    cfg.hostname = None
    assert cfg.hostname is None


def test_ip_addresses() -> None:
    assert validate_ip("10.0.0.1") == "10.0.0.1"
    assert validate_ip("fd00:0::0001") == "fd00::1"
    assert validate_ip("10.1.2.3/25") == "10.1.2.3/25"
    for bad in ["10.0.0.256", "host", "0.0.0.0", "224.0.0.1", "::", "10.0.0.1/33"]:
        with pytest.raises(VzcptError, match="invalid IP address"):
            validate_ip(bad)
    with pytest.raises(VzcptError):
        validate_ip("10.0.0.1/24", prefix_ok=False)

    cfg = VeConfig()
    assert cfg.add_ip("10.0.0.2") == "10.0.0.2"
    cfg.add_ip("fd00::2/64")
    cfg.add_ip("10.0.0.2/24")  # same address again: new prefix, same place
    assert cfg.get("IP_ADDRESS") == "10.0.0.2/24 fd00::2/64"
    cfg.del_ip("10.0.0.2")
    assert cfg.ip_addresses == ["fd00::2/64"]
    with pytest.raises(VzcptError, match="is not assigned"):
        cfg.del_ip("10.9.9.9")
    cfg.del_ip("all")
    assert cfg.ip_addresses == []
    cfg.ip_addresses = ["10.0.0.5", "10.0.0.5", "10.0.0.6"]
    assert cfg.get("IP_ADDRESS") == "10.0.0.5 10.0.0.6"
    cfg.set("IP_ADDRESS", "10.0.0.5 bogus")
    with pytest.raises(VzcptError, match="IP_ADDRESS: invalid IP address 'bogus'"):
        cfg.ip_addresses  # noqa: B018

    cfg.nameservers = ["8.8.8.8", "2001:4860:4860::8888"]
    assert cfg.nameservers == ["8.8.8.8", "2001:4860:4860::8888"]
    with pytest.raises(VzcptError):
        cfg.nameservers = ["8.8.8.8/32"]


# --- global defaults and a VE's file ------------------------------------------------


def test_default_global_conf_parses() -> None:
    cfg = VeConfig.parse(default_global_conf())
    assert cfg.get("VE_ROOT") == "/vz/root/$VEID"
    assert cfg.get("VE_PRIVATE") == "/vz/private/$VEID"
    assert cfg.get("DEF_OSTEMPLATE") == "vzcpt-host"
    assert cfg.get("DUMPDIR") == "/vz/dump"
    assert cfg.get("TEMPLATE") == "/vz/template"
    assert default_global_conf().startswith("#")  # documented for the operator


def test_load_global_and_ve(tmp_path: Path) -> None:
    paths = Paths(str(tmp_path))
    glob = load_global(paths)  # no vz.conf yet: built-in defaults, nothing written
    assert glob.get("DEF_OSTEMPLATE") == "vzcpt-host"
    assert not paths.global_conf.exists()
    glob.save()
    assert paths.global_conf.read_text() == default_global_conf()

    with pytest.raises(VzcptError, match=r"^VE 101 has no config .*101\.conf: create it first"):
        load_ve(paths, 101)
    ve = load_ve(paths, 101, missing_ok=True)
    assert ve.ve_root(101, paths) == tmp_path / "vz/root/101"
    assert ve.ve_private(101, paths) == tmp_path / "vz/private/101"
    assert ve.dump_dir(paths) == tmp_path / "vz/dump"
    assert ve.template_dir(paths) == tmp_path / "vz/template"
    assert ve.get("DEF_OSTEMPLATE") == "vzcpt-host"  # from vz.conf
    ve.set("VE_PRIVATE", "/data/ve-${VEID}/private")
    ve.save()
    assert paths.ve_conf(101).read_text() == 'VE_PRIVATE="/data/ve-${VEID}/private"\n'

    glob.set("VE_ROOT", "/mnt/$VEID/root")
    glob.save()
    ve = load_ve(paths, 101)
    assert ve.ve_root(101, paths) == tmp_path / "mnt/101/root"
    assert ve.ve_private(101, paths) == tmp_path / "data/ve-101/private"
    assert ve.as_dict()["VE_PRIVATE"] == "/data/ve-${VEID}/private"
    assert ve.as_dict()["DEF_OSTEMPLATE"] == "vzcpt-host"
    assert ve.keys() == ["VE_PRIVATE"]

    ve.set("VE_ROOT", "relative/$VEID")
    with pytest.raises(VzcptError, match=r"VE_ROOT='relative/\$VEID' is invalid"):
        ve.ve_root(101, paths)
