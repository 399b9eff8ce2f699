"""`vzcpt show`: what a dump file holds, at a glance or as JSON for tools.

The rendering is driven by the same record declarations that encode the file
(image/schema.py): nothing here knows a field that the records don't declare.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

from rich.console import Console
from rich.tree import Tree

from vzcpt.image.reader import open_dump
from vzcpt.image.schema import to_jsonable
from vzcpt.resources.fds import FileDesc
from vzcpt.resources.fds.inet import describe_record
from vzcpt.resources.fds.memfd import MemfdRecord
from vzcpt.resources.fds.tcp import STATE_NAMES
from vzcpt.resources.netlock import NetLockRecord
from vzcpt.resources.shmem import SharedMemRecord
from vzcpt.resources.task_record import DumpHeader, ProcessRecord


def render_json(path: str) -> dict[str, Any]:
    with open_dump(path) as image:
        records = [
            {"type": getattr(type(r), "__record_tag__", type(r).__name__), **to_jsonable(r)}
            for r in image.records
        ]
        for rec in records:
            if rec["type"] == "process":
                for t in rec.get("threads", []):
                    t.pop("xstate", None)
        pages = [
            {"owner": run.owner, "address": run.address, "bytes": len(run.data)}
            for run in image.pages
        ]
        return {"version": image.version, "size": image.size, "records": records, "pages": pages}


def render_text(path: str) -> None:
    console = Console(highlight=False)
    with open_dump(path) as image:
        header = image.records_of(DumpHeader)[0]
        procs = image.records_of(ProcessRecord)
        files = {f.id: f for f in image.records_of(FileDesc)}
        page_bytes: dict[int, int] = {}
        for run in image.pages:
            page_bytes[run.owner] = page_bytes.get(run.owner, 0) + len(run.data)
        console.print(
            f"[bold]{path}[/bold]: format v{image.version}, {image.size:,} bytes, "
            f"{header.tool}, kernel {header.kernel}, host {header.hostname}"
        )
        by_parent: dict[int, list[ProcessRecord]] = {}
        for p in procs:
            by_parent.setdefault(p.ppid, []).append(p)
        root = next(p for p in procs if p.pid == header.root)
        tree = Tree(_label(root, page_bytes))
        _grow(tree, root, by_parent, files, page_bytes)
        console.print(tree)
        for memfd in image.records_of(MemfdRecord):
            console.print(f"{memfd}, {page_bytes.get(memfd.pages_owner, 0):,} stored")
        for shm in image.records_of(SharedMemRecord):
            console.print(
                f"shared memory {shm.id}: {shm.kind}, {shm.size:,} bytes, "
                f"{page_bytes.get(shm.pages_owner, 0):,} stored"
            )
        for lock in image.records_of(NetLockRecord):
            console.print(f"network locked until restore: nftables table inet {lock.table}")


def _readable(value: object) -> bool:
    """A record that says what it is (defines __str__)."""
    return dataclasses.is_dataclass(value) and type(value).__str__ is not object.__str__


def _kind_record(f: FileDesc) -> object | None:
    return next(
        (sub for fld in dataclasses.fields(f) if _readable(sub := getattr(f, fld.name))), None
    )


def _what(f: FileDesc) -> str:
    """What a description is: its path, or what its kind's record says of itself."""
    if f.path:
        return f.path
    if f.kind in ("pipe", "fifo"):
        return f"pipe:[{f.pipe_id}]"
    if f.memfd:
        return f"#{f.memfd}"
    if f.inet is not None:
        what = describe_record(f.inet)
        if f.inet.type == socket.SOCK_STREAM:
            what += f" {STATE_NAMES.get(f.inet.state, '')}"
        return what
    rec = _kind_record(f)
    return "" if rec is None else str(rec)


def _items(f: FileDesc) -> list[str]:
    """The parts a kind's record lists (an epoll's watches...), one line each."""
    rec = _kind_record(f)
    if rec is None:
        return []
    return [
        str(item)
        for fld in dataclasses.fields(rec)  # type: ignore[arg-type]
        if isinstance(items := getattr(rec, fld.name), list)
        for item in items
        if _readable(item)
    ]


def _label(p: ProcessRecord, page_bytes: dict[int, int]) -> str:
    if p.zombie:
        return f"[bold]{p.pid}[/bold] <zombie, status {p.exit_status:#x}>"
    comm = p.attrs.comm if p.attrs else "?"
    tids = ", ".join(str(t.tid) for t in p.threads)
    # Pages saved while the tree ran are stored under an owner of their own;
    # those still exact at the freeze are the process's as much as the rest.
    precopied = sum(end - start for start, end in p.mm.precopied) if p.mm else 0
    pages = f"{page_bytes.get(p.pid, 0) + precopied:,} bytes of pages"
    if precopied:
        pages += f" ({precopied:,} pre-copied)"
    return f"[bold]{p.pid}[/bold] {comm}  pgid {p.pgid} sid {p.sid}  threads [{tids}]  {pages}"


def _grow(
    node: Tree,
    p: ProcessRecord,
    by_parent: dict[int, list[ProcessRecord]],
    files: dict[int, FileDesc],
    page_bytes: dict[int, int],
) -> None:
    if p.mm is not None:
        maps = node.add(f"{len(p.mm.vmas)} mappings")
        for v in p.mm.vmas:
            prot = "".join(
                c if p_ else "-"
                for c, p_ in zip("rwx", (v.prot & 1, v.prot & 2, v.prot & 4), strict=True)
            )
            maps.add(
                f"{v.start:012x}-{v.end:012x} {prot}{'s' if v.shared else 'p'} {v.kind:<6} {v.path}"
            )
    if p.fds:
        fds = node.add(f"{len(p.fds)} descriptors")
        for e in p.fds:
            f = files[e.file_id]
            what = _what(f)
            entry = fds.add(
                f"{e.fd}: {f.kind} {what} pos {f.pos} flags {f.flags:#o}"
                f"{' cloexec' if e.cloexec else ''}"
            )
            for item in _items(f):
                entry.add(item)
    for child in by_parent.get(p.pid, []):
        _grow(node.add(_label(child, page_bytes)), child, by_parent, files, page_bytes)
