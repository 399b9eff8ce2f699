"""`vzcpt`: checkpoint and restore of plain process trees (dump, restore, show, check)."""

from __future__ import annotations

import argparse
import json
import sys

from vzcpt.cli.common import ProgressLine, exit_at_once, print_stats, run
from vzcpt.resources.context import Stats


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vzcpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dump = sub.add_parser("dump", help="checkpoint the process tree rooted at PID")
    dump.add_argument("--pid", "-t", type=int, required=True, help="root of the tree")
    dump.add_argument("--dumpfile", "-o", required=True, help="dump file, or - for stdout")
    leave = dump.add_mutually_exclusive_group()
    leave.add_argument(
        "--leave-running", "-R", action="store_true", help="let the tree run on after the dump"
    )
    leave.add_argument(
        "--leave-stopped",
        "-s",
        action="store_true",
        help="leave the tree stopped (SIGSTOP) after the dump",
    )
    dump.add_argument("--compress", action="store_true", help="compress pages with zstd")
    dump.add_argument(
        "--shell-job",
        "-j",
        action="store_true",
        help="the tree was started from a shell: it may hold that shell's terminal",
    )
    dump.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="how long the tree may run to accept the connections waiting on its "
        "listeners before the dump (default 2)",
    )
    dump.add_argument("--stats", action="store_true", help="print times, pages and bytes")

    restore = sub.add_parser("restore", help="rebuild a tree from a dump file")
    restore.add_argument("--dumpfile", "-i", required=True, help="dump file, or - for stdin")
    restore_mode = restore.add_mutually_exclusive_group()
    restore_mode.add_argument(
        "--leave-stopped",
        "-s",
        action="store_true",
        help="leave the restored tree stopped (SIGSTOP)",
    )
    restore_mode.add_argument(
        "--shell-job",
        "-j",
        action="store_true",
        help="continue the tree as the foreground job of this terminal, and wait for it",
    )
    restore.add_argument("--stats", action="store_true", help="print times, pages and bytes")

    show = sub.add_parser("show", help="what a dump file holds")
    show.add_argument("dumpfile")
    show.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("check", help="which kernel features checkpoint/restore can use here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code = run("vzcpt", lambda: _dispatch(args))
    if argv is None:  # the program itself, not a caller in Python
        exit_at_once(code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "dump":
        from vzcpt.dump import Leave, dump_tree
        from vzcpt.resources.accept_queue import DRAIN_TIMEOUT_S

        leave: Leave = (
            "running" if args.leave_running else "stopped" if args.leave_stopped else "kill"
        )
        progress = ProgressLine()
        try:
            stats = dump_tree(
                args.pid,
                args.dumpfile,
                leave=leave,
                compress=args.compress,
                stats=Stats(on_progress=progress),
                await_exit=False,  # we exit next; the kernel finishes the teardown
                shell_job=args.shell_job,
                drain_timeout=(
                    DRAIN_TIMEOUT_S if args.drain_timeout is None else args.drain_timeout
                ),
            )
        finally:
            progress.done()
        if args.stats:
            print("dump statistics:", file=sys.stderr)
            print_stats(stats)
        return 0
    if args.command == "restore":
        from vzcpt.restore import restore_tree, shelljob

        progress = ProgressLine()
        stats = Stats(on_progress=progress)
        try:
            root = restore_tree(
                args.dumpfile,
                leave_stopped=args.leave_stopped,
                stats=stats,
                shell_job=args.shell_job,
            )
        finally:
            progress.done()
        if args.stats:
            print("restore statistics:", file=sys.stderr)
            print_stats(stats)
        if args.shell_job:  # the terminal is the job's now: no output of ours on it
            return shelljob.wait(root)
        print(root)
        return 0
    if args.command == "show":
        from vzcpt.show import render_json, render_text

        if args.json:
            json.dump(render_json(args.dumpfile), sys.stdout, indent=1)
            print()
        else:
            render_text(args.dumpfile)
        return 0
    if args.command == "check":
        from vzcpt.kernel.probes import all_probes

        probes = all_probes()
        for probe in probes:
            mark = "ok  " if probe.ok else "MISS"
            print(f"{mark} {probe.name:<32} {probe.detail}")
        essential_missing = [p for p in probes if not p.ok and p.name in ESSENTIAL]
        if essential_missing:
            print("Checkpoint/restore will not work here.")
            return 1
        print("Looks good.")
        return 0
    raise AssertionError(args.command)


ESSENTIAL = {
    "root",
    "ptrace_seize",
    "process_vm_readv",
    "pidfd",
    "clone3_set_tid",
    "pagemap_pfn",
    "prctl_mm_map",
}


if __name__ == "__main__":
    sys.exit(main())
