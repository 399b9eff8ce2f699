"""The dump file: record schema round-trips, the frame stream, corruption detection."""

from __future__ import annotations

import enum
import hashlib
import io
import mmap
import os
import stat
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import xxhash

import vzcpt
from vzcpt.errors import CorruptDump, VzcptError
from vzcpt.image import frames, schema
from vzcpt.image.reader import DumpImage, open_dump
from vzcpt.image.writer import DumpWriter, create_dumpfile

U64_MAX = (1 << 64) - 1
PAGE = 4096


class Prot(enum.IntEnum):
    READ = 1
    WRITE = 2


class Kind(enum.Enum):
    ANON = "anon"
    FILE = "file"


@schema.record("test.image.vma")
@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    prot: Prot
    kind: Kind
    path: str | None = None
    flags: frozenset[str] = frozenset()


@schema.record("test.image.task")
@dataclass
class Task:
    pid: int
    comm: str
    regs: tuple[int, ...]
    pair: tuple[int, str]
    vmas: list[Vma]
    fds: dict[int, str]
    names: dict[str, int]
    blob: bytes
    ratio: float
    stopped: bool
    parent: Task | None = None
    children: list[int] = field(default_factory=list)


@schema.record("test.image.small")
@dataclass(frozen=True)
class Small:
    n: int
    note: str = "default"


def sample_task() -> Task:
    vma = Vma(
        0x7F0000000000, 0x7F0000001000, Prot.READ, Kind.FILE, "/lib/x.so", frozenset({"b", "a"})
    )
    parent = Task(1, "init", (), (0, ""), [], {}, {}, b"", 0.0, False)
    return Task(
        pid=4242,
        comm="réd\x00is",
        regs=(U64_MAX, 0, 1 << 63),
        pair=(7, "seven"),
        vmas=[vma, Vma(0, PAGE, Prot.WRITE, Kind.ANON)],
        fds={0: "/dev/null", 255: "pipe:[12]", -1: "odd"},
        names={"1": 1, "a": 2},
        blob=bytes(range(256)),
        ratio=0.1,
        stopped=True,
        parent=parent,
    )


# ------------------------------------------------------------------ schema


def test_record_round_trip() -> None:
    odd_name = os.fsdecode(b"/tmp/\xff\xfe name")  # not UTF-8: lone surrogates
    samples = (sample_task(), Small(U64_MAX), Small(-(1 << 70), odd_name), sample_task().vmas[0])
    for obj in samples:
        data = schema.encode(obj)
        back = schema.decode(data)
        assert back == obj
        assert type(back) is type(obj)
    back_task = schema.decode(schema.encode(sample_task()))
    assert isinstance(back_task, Task)
    assert isinstance(back_task.vmas[0].prot, Prot)
    assert isinstance(back_task.regs, tuple)
    assert list(back_task.fds) == [0, 255, -1]


def test_jsonable_shape() -> None:
    j = schema.to_jsonable(sample_task())
    assert list(j) == [
        "pid", "comm", "regs", "pair", "vmas", "fds", "names", "blob", "ratio", "stopped",
        "parent", "children",
    ]  # fmt: skip
    assert j["regs"] == [U64_MAX, 0, 1 << 63]
    assert j["fds"] == {"0": "/dev/null", "255": "pipe:[12]", "-1": "odd"}
    assert j["vmas"][0]["prot"] == 1 and j["vmas"][0]["kind"] == "file"
    assert j["vmas"][0]["flags"] == ["a", "b"]
    assert j["blob"] == {"$b": schema.to_jsonable(bytes(range(256)))["$b"]}
    assert schema.from_jsonable(bytes, {"$b": "AAE="}) == b"\x00\x01"
    assert Task.__record_tag__ == "test.image.task"  # type: ignore[attr-defined]
    enc = schema.encode(Small(1))
    assert b" " not in enc and enc.startswith(b'{"t":"test.image.small"')


def test_missing_key_uses_default() -> None:
    assert schema.from_jsonable(Small, {"n": 3}) == Small(3)
    back = schema.from_jsonable(Vma, {"start": 0, "end": 1, "prot": 2, "kind": "anon"})
    assert back == Vma(0, 1, Prot.WRITE, Kind.ANON)


@pytest.mark.parametrize(
    "tp, value, words",
    [
        (Small, {"n": 1, "extra": 2}, "unknown field(s) extra"),
        (Small, {"note": "x"}, "missing field 'n'"),
        (Small, {"n": "1"}, "n: expected int"),
        (Small, {"n": True}, "n: expected int"),
        (Small, [1], "expected a Small object"),
        (Vma, {"start": 0, "end": 1, "prot": 9, "kind": "anon"}, "expected a Prot value"),
        (Task, None, "expected a Task object"),
        (dict[int, str], {"x": "y"}, "keys of type int"),
        (tuple[int, str], [1], "a list of 2 items"),
        (bytes, {"$b": "!!"}, "valid base64"),
        (bytes, "abc", "bytes"),
        (int | None, "s", "expected int | NoneType"),
        (list[int], [1, "2"], "[1]: expected int"),
    ],
)
def test_schema_rejects(tp: Any, value: Any, words: str) -> None:
    with pytest.raises(CorruptDump, match=None) as e:
        schema.from_jsonable(tp, value)
    assert words in str(e.value)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"{not json", "not valid JSON"),
        (b'{"t":"no.such.tag","v":{}}', "unknown record type 'no.such.tag'"),
        (b'{"v":{}}', "no tag"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"t":"test.image.small","v":{"n":1,"zz":0}}', "record 'test.image.small': "),
    ],
)
def test_decode_rejects(data: bytes, words: str) -> None:
    with pytest.raises(CorruptDump) as e:
        schema.decode(data)
    assert words in str(e.value)


def test_record_misuse() -> None:
    @dataclass
    class Unregistered:
        x: int

    with pytest.raises(TypeError):
        schema.encode(Unregistered(1))
    with pytest.raises(TypeError):
        schema.record("test.image.notdc")(int)
    with pytest.raises(ValueError, match="test.image.small"):
        schema.record("test.image.small")(Unregistered)
    with pytest.raises(TypeError):
        schema.to_jsonable({1: 1, "1": 2})  # keys would collide
    with pytest.raises(TypeError):
        schema.to_jsonable(object())


# ------------------------------------------------------------------ stream helpers


def pattern(pages: int, seed: int) -> bytes:
    """Compressible but not trivial page contents."""
    block = hashlib.sha256(str(seed).encode()).digest() * (PAGE // 32)
    return b"".join(block[i % 7 :] + block[: i % 7] for i in range(pages))


RUNS = [
    (100, 0x7F0000003000, pattern(3, 1)),
    (100, 0x400000, pattern(1, 2)),
    (7, 0x1000, os.urandom(2 * PAGE)),
]


def write_sample(out: Any, compress: bool = False) -> DumpWriter:
    with DumpWriter(out, compress=compress) as w:
        w.write_record(sample_task())
        for owner, address, data in RUNS:
            w.write_pages(owner, address, memoryview(data))
        w.write_record(Small(U64_MAX))
        w.write_record(Small(2, "x" * 10000))  # big enough to be compressed
    return w


def check_sample(img: DumpImage) -> None:
    assert img.version == 1
    assert img.records == [sample_task(), Small(U64_MAX), Small(2, "x" * 10000)]
    assert img.records_of(Small) == [Small(U64_MAX), Small(2, "x" * 10000)]
    got = [(r.owner, r.address, bytes(r.data)) for r in img.pages]
    assert got == RUNS
    assert [r.address for r in img.pages_of(100)] == [0x400000, 0x7F0000003000]
    assert img.pages_of(12345) == []


def dump_bytes(compress: bool = False) -> bytes:
    out = io.BytesIO()
    write_sample(out, compress)
    return out.getvalue()


# ------------------------------------------------------------------ stream round trips


@pytest.mark.parametrize("compress", [False, True])
def test_file_round_trip(tmp_path: Path, compress: bool) -> None:
    path = str(tmp_path / "dump.img")
    with create_dumpfile(path) as f:
        w = write_sample(f, compress)
    size = os.path.getsize(path)
    assert w.stats.records == 3 and w.stats.page_frames == 3 and w.stats.pages == 6
    assert w.stats.stored_bytes == size
    assert (w.stats.stored_bytes < w.stats.raw_bytes) == compress
    with open_dump(path) as img:
        check_sample(img)
        assert img.size == size
        if not compress:
            # Zero copy: page data are views into the mapping of the file.
            assert all(isinstance(r.data.obj, mmap.mmap) for r in img.pages)
        data = img.pages[0].data
    with pytest.raises(ValueError):
        bytes(data)  # released by close()
    assert dump_bytes(compress)[:16] == Path(path).read_bytes()[:16]


def test_large_run_is_split(tmp_path: Path) -> None:
    path = str(tmp_path / "big.img")
    data = bytearray(frames.MAX_RUN + 3 * PAGE)
    data[-PAGE:] = pattern(1, 9)
    data[:PAGE] = pattern(1, 8)
    for compress in (False, True):
        # writeback: each 64 MiB frame is sent on to the disk as it is written.
        with create_dumpfile(path) as f, DumpWriter(f, compress=compress, writeback=True) as w:
            w.write_pages(1, 0x10000000, data)
        assert w.stats.page_frames == 2 and w.stats.pages == len(data) // PAGE
        with open_dump(path) as img:
            runs = img.pages_of(1)
            assert [(r.address, len(r.data)) for r in runs] == [
                (0x10000000, frames.MAX_RUN),
                (0x10000000 + frames.MAX_RUN, 3 * PAGE),
            ]
            assert bytes(runs[0].data[:PAGE]) == data[:PAGE]
            assert bytes(runs[1].data[-PAGE:]) == data[-PAGE:]


def test_reserved_blocks_are_given_back(tmp_path: Path) -> None:
    path = tmp_path / "reserved.img"
    with create_dumpfile(str(path)) as f, DumpWriter(f) as w:
        w.reserve(64 << 20)  # far more than what comes
        assert os.fstat(f.fileno()).st_blocks * 512 >= 64 << 20
        assert os.fstat(f.fileno()).st_size < PAGE  # the size is still what was written
        w.write_pages(1, 0, pattern(4, 3))
    size = path.stat().st_size
    assert size == w.stats.stored_bytes
    assert path.stat().st_blocks * 512 < size + (1 << 20)  # the rest was given back
    with open_dump(str(path)) as img:
        assert bytes(img.pages_of(1)[0].data) == pattern(4, 3)


def test_no_room_for_a_reservation_is_one_line(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        with create_dumpfile(str(small / "d.img")) as f:
            w = DumpWriter(f)
            with pytest.raises(VzcptError, match="no space left for") as e:
                w.reserve(8 << 20)
            assert "\n" not in str(e.value)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_file_system_without_fallocate_takes_plain_writes(tmp_path: Path) -> None:
    plain = tmp_path / "ramfs"
    plain.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(plain)], check=True)
    try:
        path = str(plain / "d.img")
        with create_dumpfile(path) as f, DumpWriter(f, writeback=True) as w:
            w.reserve(8 << 20)  # ramfs has no fallocate: nothing reserved, no error
            w.write_pages(1, 0, pattern(70, 5))  # over _SMALL_RUN: written back as it goes
        with open_dump(path) as img:
            assert bytes(img.pages_of(1)[0].data) == pattern(70, 5)
    finally:
        subprocess.run(["umount", str(plain)], check=True)


def test_page_runs_from_many_threads(tmp_path: Path) -> None:
    """Threads write page runs at once (resources/pages.copy_batches): every
    frame comes out whole, and the END frame counts them all."""
    path = str(tmp_path / "threads.img")
    runs = {
        (owner, n): pattern(n % 5 + 1, owner * 1000 + n) for owner in (1, 2) for n in range(400)
    }
    with create_dumpfile(path) as f, DumpWriter(f) as w:

        def write(owner: int) -> None:
            for n in range(400):
                if n % 7 == 0:
                    w.write_record(Small(n=owner * 1000 + n))
                w.write_pages(owner, n << 20, runs[owner, n])

        threads = [threading.Thread(target=write, args=(owner,)) for owner in (1, 2)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads take turns between any two bytecodes
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(interval)
    with open_dump(path) as img:
        assert sorted(r.n for r in img.records_of(Small)) == sorted(
            o * 1000 + n for o in (1, 2) for n in range(0, 400, 7)
        )
        for owner in (1, 2):
            got = {r.address >> 20: bytes(r.data) for r in img.pages_of(owner)}
            assert got == {n: runs[owner, n] for n in range(400)}


def test_incompressible_pages_stay_raw(tmp_path: Path) -> None:
    path = str(tmp_path / "rand.img")
    with create_dumpfile(path) as f, DumpWriter(f, compress=True) as w:
        w.write_pages(1, 0, os.urandom(16 * PAGE))
    with open_dump(path) as img:
        assert isinstance(img.pages[0].data.obj, mmap.mmap)


def test_dumpfile_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "dump.img"
    old = os.umask(0)
    try:
        with create_dumpfile(str(path)) as f:
            f.write(b"x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path.chmod(0o666)  # an existing file keeps its bits through O_CREAT
        with create_dumpfile(str(path)) as f:
            pass
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_size == 0  # truncated
    finally:
        os.umask(old)


def test_missing_and_unwritable(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.img")
    with pytest.raises(VzcptError) as e:
        open_dump(missing)
    assert str(e.value) == f"cannot open dump file {missing}: No such file or directory"
    assert not isinstance(e.value, CorruptDump)
    with pytest.raises(VzcptError, match="cannot create dump file"):
        create_dumpfile(str(tmp_path / "no" / "dir.img"))


class Pipe:
    """Both ends of a pipe, each closed exactly once (fd numbers get reused)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.open = {self.r, self.w}

    def close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    for fd in list(p.open):
        p.close(fd)


def in_thread(fn: Callable[[], None]) -> Callable[[], None]:
    """Run fn in a thread; the returned join() re-raises its exception."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()

    def join() -> None:
        t.join(timeout=60)
        assert not t.is_alive()
        if errors:
            raise errors[0]

    return join


@pytest.mark.parametrize("compress", [False, True])
def test_pipe_round_trip(pipe: Pipe, monkeypatch: pytest.MonkeyPatch, compress: bool) -> None:
    """create_dumpfile("-") to a pipe, open_dump("-") from it: the ssh path."""
    r, w = pipe.r, pipe.w
    wfile = open(w, "wb", closefd=False)  # noqa: SIM115 - lives as long as the test
    rfile = open(r, "rb", closefd=False)  # noqa: SIM115
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(wfile))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(rfile))

    def writer() -> None:
        try:
            out = create_dumpfile("-")
            assert out is sys.stdout.buffer
            with DumpWriter(out, compress=compress) as dw:
                dw.write_record(sample_task())
                for owner, address, data in RUNS:
                    dw.write_pages(owner, address, data)
                dw.write_pages(8, 0, bytes(70 << 20))  # bigger than the pipe and one frame
                dw.write_record(Small(U64_MAX))
                dw.write_record(Small(2, "x" * 10000))
        finally:
            pipe.close(w)

    join = in_thread(writer)
    try:
        img = open_dump("-")
    finally:
        join()
    with img:
        big = img.pages_of(8)
        assert sum(len(r.data) for r in big) == 70 << 20
        assert all(not any(r.data) for r in big)
        img.pages = [r for r in img.pages if r.owner != 8]
        check_sample(img)


def subprocess_env() -> dict[str, str]:
    src = os.path.dirname(os.path.dirname(vzcpt.__file__))
    return {**os.environ, "PYTHONPATH": src}


READER = """
import hashlib, sys
from vzcpt.image.reader import open_dump
from vzcpt.errors import VzcptError
try:
    img = open_dump("-")
except VzcptError as e:
    print(e)
    sys.exit(e.exit_code)
for r in img.pages:
    print(r.owner, r.address, hashlib.sha256(r.data).hexdigest())
"""


def test_real_stdin(tmp_path: Path) -> None:
    """A reader process on a real pipe (cat | python) and on a redirected file."""
    path = tmp_path / "pages.img"
    with create_dumpfile(str(path)) as f, DumpWriter(f, compress=True) as w:
        for owner, address, data in RUNS:
            w.write_pages(owner, address, data)
    want = "".join(f"{o} {a} {hashlib.sha256(d).hexdigest()}\n" for o, a, d in RUNS)
    cmd = f"cat {path} | {sys.executable} -c '{READER}'"
    out = subprocess.run(cmd, shell=True, env=subprocess_env(), capture_output=True, text=True)
    assert (out.returncode, out.stdout, out.stderr) == (0, want, "")
    with open(path, "rb") as f:
        out = subprocess.run(
            [sys.executable, "-c", READER],
            stdin=f,
            env=subprocess_env(),
            capture_output=True,
            text=True,
        )
    assert (out.returncode, out.stdout, out.stderr) == (0, want, "")
    path.write_bytes(path.read_bytes()[:-1])
    cmd = f"cat {path} | {sys.executable} -c '{READER}'"
    out = subprocess.run(cmd, shell=True, env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stdout.startswith("standard input: truncated at byte")


def test_bytesio_and_close_twice() -> None:
    out = io.BytesIO()
    w = DumpWriter(out)
    w.write_record(Small(1))
    w.close()
    w.close()
    with pytest.raises(ValueError):
        w.write_record(Small(2))
    assert out.getvalue().startswith(b"VZCPT\x00\r\n\x01\x00\x00\x00\x00\x00\x00\x00")


def test_writer_rejects_unaligned() -> None:
    w = DumpWriter(io.BytesIO())
    with pytest.raises(ValueError):
        w.write_pages(1, 0x1000, b"x" * 100)
    with pytest.raises(ValueError):
        w.write_pages(1, 0x1001, bytes(PAGE))
    with pytest.raises(ValueError):
        w.write_pages(1, U64_MAX - PAGE + 1 + PAGE, bytes(PAGE))


# ------------------------------------------------------------------ corruption


def load(tmp_path: Path, data: bytes) -> DumpImage:
    path = tmp_path / "bad.img"
    path.write_bytes(data)
    return open_dump(str(path))


def corrupt(tmp_path: Path, data: bytes) -> str:
    with pytest.raises(CorruptDump) as e:
        load(tmp_path, data).close()
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "bad.img") + ": ")
    assert "\n" not in msg
    return msg


def frame_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, kind, stored_len) of each frame, read independently of image/reader.py."""
    import struct

    out, off = [], 16
    while off < len(data):
        kind, _, stored, _, _ = struct.unpack_from("<IIQQQ", data, off)
        out.append((off, kind, stored))
        off += 36 + stored
    return out


@pytest.mark.parametrize("compress", [False, True])
def test_truncation_detected(tmp_path: Path, compress: bool) -> None:
    data = dump_bytes(compress)
    frames = frame_offsets(data)
    cuts = {3, 8, 15, 16, 17, 40, len(data) - 1, len(data) - 24, len(data) - 60}
    for off, _, stored in frames:
        cuts |= {off, off + 10, off + 36, off + 36 + stored // 2}
    for cut in sorted(cuts):
        if 0 < cut < len(data):
            msg = corrupt(tmp_path, data[:cut])
            assert f"truncated at byte {cut} (no END frame): the dump is incomplete" in msg, msg
    assert "empty file" in corrupt(tmp_path, b"")
    # Cut exactly before END: every frame is intact, but the END is missing.
    end_off = frames[-1][0]
    assert frames[-1][1] == 3
    assert "truncated" in corrupt(tmp_path, data[:end_off])


@pytest.mark.parametrize("compress", [False, True])
def test_flipped_page_byte_detected(tmp_path: Path, compress: bool) -> None:
    data = bytearray(dump_bytes(compress))
    for off, kind, stored in frame_offsets(bytes(data)):
        if kind != 2:
            continue
        bad = bytearray(data)
        bad[off + 36 + stored // 2] ^= 0x40
        msg = corrupt(tmp_path, bytes(bad))
        assert f"corrupted PAGES frame at byte {off} (payload checksum mismatch)" in msg


def test_header_damage_detected(tmp_path: Path) -> None:
    data = dump_bytes()
    frames = frame_offsets(data)
    for off, _, _ in frames:
        for pos in (off, off + 9, off + 35):
            bad = bytearray(data)
            bad[pos] ^= 1
            assert f"corrupted frame header at byte {off}" in corrupt(tmp_path, bytes(bad))
    record_off, _, stored = frames[0]
    bad = bytearray(data)
    bad[record_off + 36 + stored // 2] ^= 1
    msg = corrupt(tmp_path, bytes(bad))
    assert f"corrupted RECORD frame at byte {record_off}" in msg
    assert "unexpected bytes after the END frame" in corrupt(tmp_path, data + b"\0")
    assert "unexpected bytes after the END frame" in corrupt(tmp_path, data + data[16:])


@pytest.mark.parametrize("compress", [False, True])
def test_check_without_decoding(tmp_path: Path, compress: bool) -> None:
    """decode=False (a dumper checking its file) still checks every record's
    checksum, and would accept a record only the decoder refuses."""
    path = tmp_path / "dump.img"
    data = dump_bytes(compress)
    path.write_bytes(data)
    with open_dump(str(path), decode=False) as img:
        assert img.records == []
        assert [(r.owner, r.address, bytes(r.data)) for r in img.pages] == RUNS
    record_off, kind, stored = frame_offsets(data)[0]
    assert kind == 1
    bad = bytearray(data)
    bad[record_off + 36 + stored // 2] ^= 1
    path.write_bytes(bad)
    with pytest.raises(CorruptDump, match=f"corrupted RECORD frame at byte {record_off}"):
        open_dump(str(path), decode=False)

    # A dump, made by hand, whose one record is of a type nobody registered.
    def frame(kind: int, payload: bytes) -> bytes:
        head = struct.pack(
            "<IIQQQ", kind, 0, len(payload), len(payload), xxhash.xxh3_64_intdigest(payload)
        )
        return head + struct.pack("<I", zlib.crc32(head)) + payload

    record = frame(1, b'{"t":"test.image.nobody","v":{}}')
    path.write_bytes(data[:16] + record + frame(3, struct.pack("<QQQ", 1, 0, 0)))
    open_dump(str(path), decode=False).close()
    with pytest.raises(CorruptDump, match="unknown record type 'test.image.nobody'"):
        open_dump(str(path))


def test_wrong_magic_and_version(tmp_path: Path) -> None:
    data = dump_bytes()
    msg = corrupt(tmp_path, b"\x7fELF" + data[4:])
    assert "not a vzcpt dump file (bad magic" in msg and "at byte 0" in msg
    assert "not a vzcpt dump file" in corrupt(tmp_path, b"hello")
    assert "not a vzcpt dump file" in corrupt(tmp_path, b"VZCPT\x00\n\n" + data[8:])  # text mode
    msg = corrupt(tmp_path, data[:8] + (2).to_bytes(4, "little") + data[12:])
    assert "dump format version 2 (at byte 8) is not supported" in msg
    assert "reserved field" in corrupt(tmp_path, data[:12] + b"\1\0\0\0" + data[16:])


def test_aborted_dump_has_no_end(tmp_path: Path) -> None:
    path = str(tmp_path / "bad.img")
    with pytest.raises(RuntimeError), create_dumpfile(path) as f, DumpWriter(f) as w:
        w.write_record(Small(1))
        w.write_pages(1, 0, bytes(PAGE))
        raise RuntimeError("dump failed half way")
    with pytest.raises(CorruptDump, match="no END frame"):
        open_dump(path)


def test_overlapping_pages_rejected(tmp_path: Path) -> None:
    out = io.BytesIO()
    with DumpWriter(out) as w:
        w.write_pages(5, 0x10000, bytes(2 * PAGE))
        w.write_pages(6, 0x10000, bytes(PAGE))  # another owner: fine
        w.write_pages(5, 0x11000, bytes(PAGE))
    assert "pages of 5 are stored twice at 0x11000" in corrupt(tmp_path, out.getvalue())
