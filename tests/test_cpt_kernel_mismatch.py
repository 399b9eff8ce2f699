"""A dump whose vDSO is not this kernel's is refused before anything is built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cpt import vzcpt
from harness import Program, all_processes
from vzcpt.image.reader import open_dump
from vzcpt.image.writer import DumpWriter, create_dumpfile
from vzcpt.resources.task_record import DumpHeader


def rewrite_with_other_vdso(src: Path, dst: Path) -> None:
    """The same dump, as if made on a kernel with another vDSO."""
    with open_dump(str(src)) as image, create_dumpfile(str(dst)) as out:
        writer = DumpWriter(out)
        for rec in image.records:
            if isinstance(rec, DumpHeader):
                rec = dataclasses.replace(rec, kernel="6.1.0-other", vdso="6.1.0-other:abcd")
            writer.write_record(rec)
        for run in image.pages:
            writer.write_pages(run.owner, run.address, run.data)
        writer.close()


def test_other_kernel_vdso_is_refused(tmp_path: Path) -> None:
    with Program.start("holder", "1", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img")
        prog.wait_gone()
        rewrite_with_other_vdso(tmp_path / "dump.img", tmp_path / "other.img")
        result = vzcpt("restore", "--dumpfile", tmp_path / "other.img", check=False)
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1, result.stderr
        assert "vDSO" in result.stderr and "6.1.0-other" in result.stderr
        assert prog.pid not in all_processes()
        # The untouched dump still restores.
        vzcpt("restore", "--dumpfile", tmp_path / "dump.img")
        assert prog.verify() == "OK"
