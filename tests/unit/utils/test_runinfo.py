"""ichd.utils.runinfo: the provenance block the benchmarks write beside their numbers."""

from __future__ import annotations

import sys

from ichd.utils.runinfo import RunInfo, command_line


def test_command_line_quotes_arguments_and_defaults_to_this_process(monkeypatch):
    assert command_line("benchmarks/x.py", ["--out", "a b", "--n", "3"]) == "python benchmarks/x.py --out 'a b' --n 3"
    monkeypatch.setattr(sys, "argv", ["x.py", "--model", "default"])
    assert command_line("benchmarks/x.py") == "python benchmarks/x.py --model default"
    assert command_line("benchmarks/x.py", []) == "python benchmarks/x.py"


def test_finish_reports_command_date_machine_load_and_wall_time():
    info = RunInfo.start("benchmarks/x.py", ["--fast"])
    meta = info.finish(threads=1)
    assert meta["command"] == "python benchmarks/x.py --fast"
    assert meta["date"].endswith("Z") and meta["wall_s"] >= 0.0
    assert len(meta["load_avg_start"]) == 3 and len(meta["load_avg_end"]) == 3
    assert "CPUs" in meta["machine"] and meta["threads"] == 1
