"""Process-wide CLI state set by the top-level options (``--debug``, ``-v``, ``-q``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CliState:
    debug: bool = False
    verbosity: int = 0


STATE = CliState()
