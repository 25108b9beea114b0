"""Where, when and how a measurement ran: the block a benchmark writes beside its numbers.

Every number in ``docs/results.md`` carries its command, machine, date, load and wall time; the benchmarks record
them with :class:`RunInfo`::

    info = RunInfo.start("benchmarks/ood_guards.py", argv)
    ...                                        # the measurement
    summary["meta"] = info.finish(threads=1)   # command, date, machine, load at start and end, wall seconds
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``python SCRIPT ARGS`` as it can be typed again; ``argv`` None: this process's own arguments."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", script, *(shlex.quote(a) for a in args)])


def machine() -> str:
    """The machine in a few words: architecture, CPU count, Python."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}"


@dataclass
class RunInfo:
    """A measurement's provenance, started before it runs and finished after (:meth:`finish`)."""

    command: str
    date: str
    load_avg_start: list[float]
    _t0: float = field(repr=False, default=0.0)

    @classmethod
    def start(cls, script: str, argv: Sequence[str] | None = None) -> RunInfo:
        """Record the command line, the UTC start time and the load average now."""
        return cls(command=command_line(script, argv), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   load_avg_start=[round(v, 2) for v in os.getloadavg()], _t0=time.perf_counter())

    def finish(self, **extra: Any) -> dict[str, Any]:
        """The provenance block: command, date (UTC start), machine, load average at start and end, wall seconds,
        and ``extra`` (e.g. ``threads=1``, ``model=...``)."""
        return {"command": self.command, "date": self.date, "machine": machine(),
                "load_avg_start": self.load_avg_start, "load_avg_end": [round(v, 2) for v in os.getloadavg()],
                "wall_s": round(time.perf_counter() - self._t0, 1), **extra}
