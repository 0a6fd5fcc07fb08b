"""How the core's OpenMP workers wait between parallel regions, set before ``_core`` loads libgomp.

A decode step runs hundreds of short parallel regions. libgomp's workers spin between them, unless
the process manages more OpenMP threads than it has CPUs (here: the interpreter's thread plus the
core's compute thread and its workers), when they sleep after 100 spins and each region pays a
futex wake-up: on 2 cores a decode step then takes 31 ms instead of 16. An explicit active policy
with a bounded spin count (about a millisecond, then they sleep) keeps the fast path; a user's own
``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` always wins.
"""

from __future__ import annotations

import os

SPIN_COUNT = "100000"


def configure() -> None:
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
