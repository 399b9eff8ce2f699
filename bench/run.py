#!/usr/bin/env python3
"""Benchmark vzcpt against the reference CRIU, in one invocation, run by run.

    python3 bench/run.py [--sizes 256,1024,4096] [--runs 3] [--cases mem,tree,maps,tcp]
                         [--quick] [--json FILE] [--vzcpt EXE] [--criu EXE] [--tmpdir DIR]

Each case starts a fresh holder (bench/holder.c), dumps it (which kills it),
restores it, checks the restored copy, and kills it; vzcpt and CRIU take turns
on the same case, swapping who goes first on every run. Prints the medians and
the ratio vzcpt/CRIU for dump time, frozen time, restore time and dump size.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import procs
from tools import Criu, DumpResult, ToolFailed, Vzcpt

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class Tool(Protocol):
    name: str

    def version(self) -> str: ...
    def dump(self, pid: int, work: Path, timeout: float, tcp: bool) -> DumpResult: ...
    def restore(self, work: Path, timeout: float, tcp: bool) -> tuple[float, int]: ...
    def unlock(self, work: Path) -> None: ...


@dataclass(frozen=True)
class Case:
    name: str
    mode: str  # holder mode: mem, tree, maps or tcp
    count: int  # MiB for mem, processes for tree, mappings for maps, connections for tcp
    mib: int  # about how much memory it holds, to scale time-outs

    @property
    def tcp(self) -> bool:
        """Does the tree hold established TCP connections (CRIU must be told)?"""
        return self.mode == "tcp"

    @property
    def timeout(self) -> float:
        return 60 + self.mib * 0.1


@dataclass
class RunResult:
    case: str
    tool: str
    dump: float | None = None
    durable: float | None = None  # dump, then until its files are on disk
    frozen: float | None = None
    restore: float | None = None
    size: int | None = None
    dump_error: str | None = None
    restore_error: str | None = None  # a failed restore, or a restored tree that is wrong


METRICS = ("dump", "durable", "frozen", "restore", "size")


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that the clean-up still runs."""


def _on_sigterm(signo: int, frame: object) -> None:
    raise Interrupted(f"signal {signo}")


def make_cases(sizes: list[int], names: list[str]) -> list[Case]:
    cases: list[Case] = []
    if "mem" in names:
        cases += [Case(f"mem {mib} MiB", "mem", mib, mib) for mib in sizes]
    if "tree" in names:
        cases.append(Case("tree of 100", "tree", 100, 100))
    if "maps" in names:
        cases.append(Case("5000 mappings", "maps", 5000, 20))
    if "tcp" in names:
        cases.append(Case("1000 TCP conns", "tcp", 1000, 20))
    return cases


def one_run(tool: Tool, case: Case, holder: Path, tmp: Path) -> RunResult:
    """Start a holder, dump it, restore it, verify it, kill it. Never leaves a process."""
    res = RunResult(case.name, tool.name)
    work = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{case.mode}-{tool.name}-"))
    ready = work / "ready"
    pids: set[int] = set()
    proc = procs.start_holder(holder, case.mode, case.count, ready)
    try:
        expected = procs.wait_for_line(ready, "READY", case.timeout, alive=proc.pid)
        pids = set(procs.tree_pids(proc.pid))
        if case.mode == "tree" and len(pids) != case.count:
            raise RuntimeError(f"the holder tree has {len(pids)} processes, not {case.count}")
        # Write back the previous run's dump first: neither tool should pay for the
        # other's dirty pages (vzcpt fsyncs its dump, CRIU does not).
        os.sync()
        try:
            with procs.reaping(pids):
                dumped = tool.dump(proc.pid, work, case.timeout, case.tcp)
        except ToolFailed as exc:
            res.dump_error = str(exc)
            return res
        res.dump, res.frozen, res.size = dumped.wall, dumped.frozen, dumped.size
        # vzcpt's dump is on disk when the command returns (it syncs before it
        # kills); CRIU's is in the page cache. Timing a syncfs right after puts
        # both on the footing of a dump that survives a power cut.
        res.durable = dumped.wall + procs.timed_syncfs(work)
        # The dump killed the tree; its pids must be free before the restore takes them.
        try:
            # Through Popen too: it must know the holder is gone, or it would later reap
            # the restored root, which has the same pid.
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            res.restore_error = "the dumped holder still runs after the dump"
            return res
        left = procs.reap(pids - {proc.pid}, timeout=30)
        if left:
            res.restore_error = f"{len(left)} dumped processes still there after the dump"
            return res
        try:
            res.restore, root = tool.restore(work, case.timeout, case.tcp)
        except ToolFailed as exc:
            res.restore_error = str(exc)
            return res
        problem = verify(case, proc.pid, root, pids, expected, ready)
        if problem:
            res.restore_error = f"restored tree wrong: {problem}"
        return res
    finally:
        tool.unlock(work)  # a dump whose restore failed leaves its network lock
        procs.kill_tree(pids | {proc.pid}, proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        procs.reap(pids | {proc.pid})
        procs.kill_children()
        shutil.rmtree(work, ignore_errors=True)


def verify(case: Case, saved: int, root: int, pids: set[int], expected: str, ready: Path) -> str:
    """Is the restored tree the one dumped, and running? An empty string if so."""
    if root != saved:
        return f"root pid {root}, expected {saved}"
    not_running = sorted(p for p in pids if procs.state(p) not in ("S", "R", "D"))
    if not_running:
        states = ", ".join(f"{p}:{procs.state(p) or 'gone'}" for p in not_running[:5])
        return f"{len(not_running)} of {len(pids)} processes not running ({states})"
    if case.mode == "maps" and procs.map_count(root) < case.count:
        return f"{procs.map_count(root)} mappings, expected at least {case.count}"
    check = ready.with_name(ready.name + ".check")
    check.unlink(missing_ok=True)
    os.kill(root, signal.SIGUSR1)
    try:
        got = procs.wait_for_line(check, "CHECK", case.timeout, alive=root)
    except RuntimeError as exc:
        return f"no checksum: {exc}"
    if got != expected:
        return f"memory checksum {got}, expected {expected}"
    return ""


# ---- the table ------------------------------------------------------------------


def fmt(metric: str, value: float) -> str:
    if metric == "size":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.3f} s"


@dataclass
class Cell:
    value: float | None = None
    text: str = ""


def cell(results: list[RunResult], tool: str, metric: str) -> Cell:
    values: list[float] = []
    errors: list[str] = []
    for r in results:
        value = getattr(r, metric)
        error = r.dump_error or (r.restore_error if metric == "restore" else None)
        if error:
            errors.append(error)
        elif value is not None:
            values.append(float(value))
    if not values:
        return Cell(None, f"{tool} failed: {errors[0]}" if errors else "not run")
    median = statistics.median(values)
    text = fmt(metric, median)
    if len(values) > 1 and metric != "size":
        text += f" ({min(values):.2f}-{max(values):.2f})"
    if errors:
        text += f" ({len(errors)}/{len(results)} failed)"
    return Cell(median, text)


def table(cases: list[Case], results: list[RunResult], width: int = 60) -> str:
    rows = [["case", "metric", "vzcpt", "CRIU", "vzcpt/CRIU"]]
    notes: list[str] = []
    for case in cases:
        for metric in METRICS:
            pair = [
                cell([r for r in results if r.case == case.name and r.tool == t], t, metric)
                for t in ("vzcpt", "criu")
            ]
            a, b = pair[0].value, pair[1].value
            ratio = f"{a / b:.2f}" if a is not None and b else "-"
            texts = [c.text if len(c.text) <= width else c.text[: width - 3] + "..." for c in pair]
            rows.append([case.name if metric == "dump" else "", metric, *texts, ratio])
    for r in results:
        for phase, error in (("dump", r.dump_error), ("restore", r.restore_error)):
            note = f"{r.case}: {r.tool} {phase} failed: {error}"
            if error and note not in notes:
                notes.append(note)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if notes:
        lines += ["", "Failures:"] + [f"  {note}" for note in notes]
    return "\n".join(lines)


# ---- the driver -----------------------------------------------------------------


def environment(tools: list[Tool]) -> list[str]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return "?"

    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    rev = out(["git", "rev-parse", "--short", "HEAD"])
    dirty = " (with uncommitted changes)" if out(["git", "status", "--porcelain", "src"]) else ""
    return [
        f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"host: Linux {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{mem_kib / 2**20:.1f} GiB RAM",
        f"vzcpt: {tools[0].version()} at commit {rev}{dirty}",
        f"criu: {tools[1].version()}",
    ]


def default_vzcpt() -> str:
    venv = REPO / ".venv" / "bin" / "vzcpt"
    return str(venv) if venv.exists() else shutil.which("vzcpt") or "vzcpt"


def default_criu() -> str:
    for candidate in (os.environ.get("CRIU"), "/opt/criu-ref/criu", shutil.which("criu")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return "criu"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="256,1024,4096", help="MiB held by the mem cases")
    p.add_argument("--runs", type=int, default=3, help="runs of each case and tool")
    p.add_argument("--cases", default="mem,tree,maps,tcp", help="which cases: mem, tree, maps, tcp")
    p.add_argument(
        "--no-warmup", action="store_true", help="skip the unrecorded first round of each case"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: mem 256 MiB, one run")
    p.add_argument("--json", type=Path, help="also write every run's numbers to this file")
    p.add_argument("--vzcpt", default=default_vzcpt(), help="the vzcpt executable")
    p.add_argument("--criu", default=default_criu(), help="the criu executable")
    p.add_argument("--tmpdir", type=Path, help="where dumps go (default: $TMPDIR or /tmp)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.runs, args.cases = "256", 1, "mem"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run.py: both tools need root", file=sys.stderr)
        return 1
    sizes = [int(s) for s in args.sizes.split(",") if s]
    cases = make_cases(sizes, args.cases.split(","))
    tools: list[Tool] = [Vzcpt(args.vzcpt), Criu(args.criu)]
    signal.signal(signal.SIGTERM, _on_sigterm)
    procs.become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="vzcpt-bench-", dir=args.tmpdir))
    results: list[RunResult] = []
    status = 0
    try:
        holder = procs.compile_holder(HERE / "holder.c", tmp / "holder")
        for case in cases:
            if not args.no_warmup:
                # The first run of a size is slower, whichever tool makes it (on this VM:
                # guest memory the host must fault in again): one unrecorded round first.
                for tool in tools:
                    log(
                        f"{case.name} warm-up {tool.name}: "
                        + progress(one_run(tool, case, holder, tmp))
                    )
            for run in range(args.runs):
                # Alternate who goes first, so neither always meets a warm or a cold cache.
                for tool in tools if run % 2 == 0 else tools[::-1]:
                    r = one_run(tool, case, holder, tmp)
                    results.append(r)
                    log(f"{case.name} [{run + 1}/{args.runs}] {tool.name:<5} " + progress(r))
    except (KeyboardInterrupt, Interrupted):
        log("interrupted: cleaned up; partial results follow")
        status = 130
    finally:
        procs.kill_children()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(environment(tools)))
    print(f"runs per case and tool: {args.runs}; medians (and ranges) of the runs\n")
    print(table(cases, results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return status


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def progress(r: RunResult) -> str:
    if r.dump_error:
        return f"dump FAILED: {r.dump_error}"
    parts = [
        f"dump {r.dump:.3f} s",
        f"durable {r.durable:.3f} s",
        f"frozen {r.frozen:.3f} s",
        f"size {(r.size or 0) >> 20} MiB",
    ]
    if r.restore_error:
        parts.append(f"restore FAILED: {r.restore_error}")
    else:
        parts.append(f"restore {r.restore:.3f} s, verified")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
