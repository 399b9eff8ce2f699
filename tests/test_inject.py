"""Injected syscalls in a real stopped process: single steps, and batches run by
the runner in the scratch area (order, results, memory, failures, chunking)."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vzcpt.dump import find_gadget
from vzcpt.errors import SyscallFailed
from vzcpt.inject.freeze import freeze_tree
from vzcpt.inject.remote import BATCH_SPACE, Placed, RemoteTask, Syscall
from vzcpt.kernel import nr
from vzcpt.proc import files
from vzcpt.proc.limits import parse_limits
from vzcpt.proc.maps import parse_maps
from vzcpt.resources.process import restore_rlimits

EBADF = 9


@pytest.fixture
def task() -> Iterator[RemoteTask]:
    """`sleep` frozen, with our scratch area mapped; resumed (and killed) afterwards."""
    yield from frozen(["sleep", "100"])


def frozen(argv: list[str], **popen: Any) -> Iterator[RemoteTask]:
    proc = subprocess.Popen(argv, **popen)
    time.sleep(0.1)  # past exec
    try:
        tree = freeze_tree(proc.pid)
        try:
            main = RemoteTask(
                proc.pid, find_gadget(proc.pid, parse_maps(files.read(proc.pid, "maps")))
            )
            main.map_scratch()
            yield main
            main.unmap_scratch()
            main.restore_regs()
        finally:
            tree.resume()
        assert proc.poll() is None  # it lived through it all
    finally:
        proc.kill()
        proc.wait()


def test_queued_calls_run_in_order_with_their_memory(task: RemoteTask) -> None:
    first = task.queue(nr.UMASK, 0o027, what="umask")
    second = task.queue(nr.UMASK, 0o077, what="umask again")
    cwd = task.queue(nr.GETCWD, bytes(256), 256, what="getcwd")
    assert first.result is None  # nothing runs before the round trip
    assert task.call(nr.GETPID, what="getpid") == task.tid  # runs the queue first
    assert (second.result, cwd.result) == (0o027, len(os.getcwd()) + 1)
    assert cwd.memory[0].rstrip(b"\0") == os.getcwd().encode()
    # The umask the process ends with is the last one set.
    assert task.call(nr.UMASK, 0o022, what="umask") == 0o077


def test_a_failure_stops_the_batch_and_names_the_call(task: RemoteTask) -> None:
    before = task.queue(nr.GETPID, what="getpid")
    task.queue(nr.CLOSE, 999, what="close of descriptor 999")
    after = task.queue(nr.UMASK, 0o077, what="umask")
    with pytest.raises(SyscallFailed, match="close of descriptor 999 in task") as e:
        task.flush()
    assert e.value.errno == EBADF
    assert before.result == task.tid and after.result is None
    assert task.pending == []
    assert task.call(nr.UMASK, 0o022, what="umask") != 0o077  # never ran


def test_a_call_that_may_fail_does_not_stop_the_batch(task: RemoteTask) -> None:
    tolerated = task.queue(nr.CLOSE, 999, what="close", may_fail=True)
    after = task.queue(nr.GETPPID, what="getppid")
    task.flush()
    assert tolerated.errno == EBADF
    assert after.result == os.getpid()


def test_more_calls_than_one_table_holds(task: RemoteTask) -> None:
    calls = [task.queue(nr.GETPID, what="getpid") for _ in range(BATCH_SPACE // 64 * 2)]
    blobs = [task.queue(nr.GETCWD, bytes(8000), 8000, what="getcwd") for _ in range(100)]
    task.flush()
    assert all(c.result == task.tid for c in calls)
    assert all(b.memory[0].rstrip(b"\0") == os.getcwd().encode() for b in blobs)


def test_legacy_batch_and_reads_see_queued_calls(task: RemoteTask) -> None:
    task.queue(nr.CHDIR, b"/tmp\0", what="chdir /tmp")
    assert task.batch([(nr.GETPID,), (nr.GETPPID,)]) == [task.tid, os.getpid()]
    assert files.readlink(task.tid, "cwd") == "/tmp"
    task.queue(nr.GETCWD, task.scratch + 100, 64, what="getcwd into put memory")
    assert task.get(100, 5) == b"/tmp\0"  # reading runs the queue first


def test_a_failure_handler_runs_after_the_round_trip_and_may_queue_more(task: RemoteTask) -> None:
    seen: list[int] = []

    def handle(failed: Syscall) -> None:
        seen.append(failed.errno)
        task.queue(nr.UMASK, 0o077, what="umask")
        task.flush()  # a handler may even wait for what it queued

    task.queue(nr.CLOSE, 999, what="close", on_failure=handle)
    task.queue(nr.UMASK, 0o027, what="umask")
    task.flush()
    assert seen == [EBADF]
    assert task.call(nr.UMASK, 0o022, what="umask") == 0o077  # the handler's came last


@pytest.fixture
def unprivileged() -> Iterator[RemoteTask]:
    """`sleep` without CAP_SYS_RESOURCE, frozen."""
    yield from frozen(["setpriv", "--bounding-set=-sys_resource", "sleep", "100"])


def test_a_hard_limit_above_ours_keeps_ours(unprivileged: RemoteTask) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    warnings: list[str] = []
    limits = {resource.RLIMIT_NOFILE: (hard + 1, hard + 1), resource.RLIMIT_CORE: (0, 0)}
    restore_rlimits(unprivileged, limits, warnings)
    unprivileged.flush()
    now = parse_limits(files.read(unprivileged.tid, "limits"))
    assert now[resource.RLIMIT_NOFILE] == (hard, hard)  # the soft limit as high as it may go
    assert now[resource.RLIMIT_CORE] == (0, 0)  # the others are set all the same
    assert len(warnings) == 1 and f"hard limit {hard + 1} is above" in warnings[0]


def test_memory_that_points_into_itself() -> None:
    """A Placed argument learns its address: here an iovec, and the bytes it points to."""
    message = b"from inside"

    def iovec(address: int) -> bytes:
        return struct.pack("<QQ", address + 16, len(message)) + message

    reader, writer = os.pipe()
    try:
        for task in frozen(["sleep", "100"], stdout=writer):
            call = task.queue(nr.WRITEV, 1, Placed(16 + len(message), iovec), 1, what="writev")
            task.flush()
            assert call.value == len(message)
            assert os.read(reader, 100) == message
    finally:
        os.close(reader)
        os.close(writer)
