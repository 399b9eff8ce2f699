"""Running a function inside another process's namespace, from a forked child.

Some state answers only to a process inside a namespace: the sockets
sock_diag lists, the values /proc/sys/net shows. A child joins the namespace
of `pid` (setns), runs the function, sends its JSON-able result back
through a pipe and exits; the parent turns any failure into one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from vzcpt.errors import VzcptError
from vzcpt.kernel.mounts import setns

NAMESPACE_FLAGS = {"net": 0x40000000, "ipc": 0x08000000, "mnt": 0x00020000}


def in_namespace(pid: int, kind: str, work: Callable[[], Any], what: str) -> Any:
    """`work()` run in the `kind` namespace ("net", "ipc", "mnt") of process `pid`."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(read_end)
            setns(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY), NAMESPACE_FLAGS[kind])
            view = memoryview(json.dumps(work()).encode())
            while view:
                view = view[os.write(write_end, view) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise VzcptError(f"could not {what} in the {kind} namespace of process {pid}")
    return json.loads(b"".join(chunks))
