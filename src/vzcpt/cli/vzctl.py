"""`vzctl`: OpenVZ's command for VEs — create, start, stop, exec, enter, set, list,
destroy, and checkpoint/restore of whole VEs (chkpnt, restore).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vzcpt.cli.common import ProgressLine, print_stats, run
from vzcpt.resources.accept_queue import DRAIN_TIMEOUT_S
from vzcpt.resources.context import Stats
from vzcpt.ve.config import parse_size
from vzcpt.ve.lifecycle import VE, list_ves
from vzcpt.ve.paths import validate_veid
from vzcpt.ve.state import VeState


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vzctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    create = sub.add_parser("create", help="create a VE from an OS template")
    create.add_argument("veid")
    create.add_argument("--ostemplate", help="vzcpt-host (default), a cached template, or a path")
    create.add_argument("--hostname")
    create.add_argument("--ipadd", action="append", default=[], metavar="IP")

    for name, text in (
        ("start", "start a VE"),
        ("stop", "stop a VE"),
        ("restart", "stop and start a VE"),
        ("status", "show a VE's state"),
        ("destroy", "remove a stopped VE and its private area"),
        ("enter", "an interactive shell inside a running VE"),
    ):
        sub.add_parser(name, help=text).add_argument("veid")

    exec_ = sub.add_parser("exec", help="run a command inside a running VE")
    exec_.add_argument("veid")
    exec_.add_argument("cmd", nargs=argparse.REMAINDER)

    sub.add_parser("list", help="a table of the VEs of this host")

    set_ = sub.add_parser("set", help="change a VE's settings")
    set_.add_argument("veid")
    set_.add_argument("--ipadd", action="append", default=[], metavar="IP")
    set_.add_argument("--ipdel", action="append", default=[], metavar="IP|all")
    set_.add_argument("--hostname")
    set_.add_argument("--nameserver", action="append", metavar="IP")
    set_.add_argument("--ram", type=parse_size, metavar="SIZE")
    set_.add_argument("--swap", type=parse_size, metavar="SIZE")
    set_.add_argument("--cpus", type=int)
    set_.add_argument("--numproc", metavar="[BARRIER:]LIMIT")
    set_.add_argument(
        "--init",
        metavar="PATH",
        help="the VE's own init (e.g. /sbin/init) from its next start; 'vzcpt' for vzcpt's reaper",
    )
    set_.add_argument("--save", action="store_true", help="keep the change in the config")

    chkpnt = sub.add_parser("chkpnt", help="checkpoint a VE: suspend, dump, kill")
    chkpnt.add_argument("veid")
    chkpnt.add_argument("--dumpfile", help="default: /vz/dump/Dump.VEID")
    chkpnt.add_argument("--stats", action="store_true")
    chkpnt.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="at suspend, how long the VE may run to accept the connections waiting on "
        f"its listeners (default {DRAIN_TIMEOUT_S:g})",
    )
    for stage in ("suspend", "dump", "kill", "resume"):
        chkpnt.add_argument(
            f"--{stage}", action="store_true", help="one stage only (not implemented yet)"
        )
    restore = sub.add_parser("restore", help="restore a VE from its dump: undump, resume")
    restore.add_argument("veid")
    restore.add_argument("--dumpfile", help="default: the VE's last dump")
    restore.add_argument("--stats", action="store_true")
    for stage in ("undump", "resume", "kill"):
        restore.add_argument(
            f"--{stage}", action="store_true", help="one stage only (not implemented yet)"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run("vzctl", lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "list":
        _print_list()
        return 0
    ve = VE(validate_veid(args.veid))
    if args.command == "create":
        ve.create(args.ostemplate, args.hostname, args.ipadd)
        print(f"VE {ve.veid} created")
    elif args.command == "start":
        print(f"Starting VE {ve.veid} ...")
        pid = ve.start()
        print(f"VE {ve.veid} started (init is pid {pid} on the host)")
    elif args.command == "stop":
        print(f"Stopping VE {ve.veid} ...")
        ve.stop()
        print(f"VE {ve.veid} stopped")
    elif args.command == "restart":
        ve.restart()
        print(f"VE {ve.veid} restarted")
    elif args.command == "destroy":
        ve.destroy()
        print(f"VE {ve.veid} destroyed")
    elif args.command == "status":
        st = ve.status()
        exists = "exist" if st.state != VeState.ABSENT else "deleted"
        mounted = "mounted" if st.state.has_processes else "unmounted"
        print(f"VEID {ve.veid} {exists} {mounted} {st.state.value}")
    elif args.command == "exec":
        if not args.cmd:
            raise SystemExit("vzctl: exec needs a command")
        command = args.cmd if len(args.cmd) > 1 else ["/bin/sh", "-c", args.cmd[0]]
        return ve.exec(command)
    elif args.command == "enter":
        ve.require("enter")  # no "entered into" for a VE that cannot be entered
        print(f"entered into VE {ve.veid}", file=sys.stderr)
        status = ve.exec(["/bin/bash", "-l"], interactive=True)
        print(f"exited from VE {ve.veid}", file=sys.stderr)
        return status
    elif args.command == "set":
        ve.set(
            hostname=args.hostname,
            add_ips=args.ipadd,
            del_ips=args.ipdel,
            nameservers=args.nameserver,
            ram_bytes=args.ram,
            swap_bytes=args.swap,
            cpus=args.cpus,
            numproc=args.numproc,
            init=args.init,
            save=args.save,
        )
        print(f"VE {ve.veid}: settings applied{' and saved' if args.save else ''}")
    elif args.command == "chkpnt":
        return _staged(_chkpnt_stage, ve, args)
    elif args.command == "restore":
        return _staged(_restore_stage, ve, args)
    return 0


def _staged(
    stage: Callable[[VE, argparse.Namespace, Stats], str], ve: VE, args: argparse.Namespace
) -> int:
    """Run a form of chkpnt or restore, with a progress line on a terminal that
    is cleared before the outcome is printed."""
    with ProgressLine() as progress:
        stats = Stats(on_progress=progress)
        outcome = stage(ve, args, stats)
    print(outcome)
    if args.stats:
        print_stats(stats)
    return 0


def _chkpnt_stage(ve: VE, args: argparse.Namespace, stats: Stats) -> str:
    drain_timeout = DRAIN_TIMEOUT_S if args.drain_timeout is None else args.drain_timeout
    if args.suspend:
        ve.suspend(stats, drain_timeout)
        return f"VE {ve.veid} suspended: processes frozen, network locked"
    if args.dump:
        path = ve.dump(args.dumpfile, stats)
        return f"VE {ve.veid} dumped to {path}; it stays suspended"
    if args.kill:
        ve.kill()
        return f"VE {ve.veid} killed"
    if args.resume:
        ve.resume()
        return f"VE {ve.veid} resumed"
    print(f"Setting up checkpoint of VE {ve.veid}...", flush=True)
    path = ve.chkpnt(args.dumpfile, stats, drain_timeout)
    return f"Checkpointing completed successfully: {path}"


def _restore_stage(ve: VE, args: argparse.Namespace, stats: Stats) -> str:
    if args.resume:
        ve.resume()
        return f"VE {ve.veid} resumed"
    if args.kill:
        ve.kill()
        return f"VE {ve.veid} killed"
    print(f"Restoring VE {ve.veid} ...", flush=True)
    pid = ve.restore(args.dumpfile, stats, frozen=args.undump)
    if args.undump:
        return f"VE {ve.veid} undumped: processes rebuilt and frozen, network locked"
    return f"Restoring completed successfully (init is pid {pid} on the host)"


def _print_list() -> None:
    rows = [("VEID", "NPROC", "STATUS", "IP_ADDR", "HOSTNAME")]
    for st in list_ves():
        rows.append(
            (
                str(st.veid),
                str(st.processes) if st.processes else "-",
                st.state.value,
                " ".join(st.addresses) or "-",
                st.hostname or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.rjust(w) if i < 2 else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


if __name__ == "__main__":
    sys.exit(main())
