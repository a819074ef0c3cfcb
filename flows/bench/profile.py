"""Where a record's time goes: a scenario run under cProfile, the flow's time split into its parts, in
microseconds per record (`serving-bench --profile`).

Each part is the cumulative time of the functions that do it; the engine's share is what is left of the
dataflow's run (Bytewax's own work between steps, and steps not listed). cProfile slows Python down, calls
more than C, so the figures are larger than in an unprofiled run; the proportions are what to read.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable

# (file name ending, function name) of the functions each part consists of; their cumulative times add up.
Functions = tuple[tuple[str, str], ...]
RUN = (("~", "<built-in method bytewax._bytewax.run_main>"),)
PARTS: dict[str, Functions] = {
    "consume": (("flows/adapters/kafka/data_source.py", "next_batch"),),  # its decoding is subtracted below
    "decode": (("flows/adapters/kafka/data_source.py", "_decoded"),),
    "model": (
        ("flows/adapters/scorers/tensorflow_saved.py", "score"),
        ("flows/adapters/scorers/remote.py", "score"),
    ),
    "results": (("flows/core/scoring.py", "score_batch"),),  # the model call is subtracted below
    "encode": (("flows/adapters/kafka/outputs.py", "result_messages"),),
    "produce": (("flows/adapters/kafka/sink.py", "write_batch"),),
}
# Parts measured inside another part: subtracted from it.
INSIDE = {"decode": "consume", "model": "results"}


def profiled(run: Callable[[], dict], records: int) -> dict:
    """`run()`'s report, plus `profile_us_per_record`: each part's microseconds per record."""
    profile = cProfile.Profile()
    report = profile.runcall(run)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]  # pstats' table, not in its stubs
    seconds = {part: _cumulative(stats, functions) for part, functions in PARTS.items()}
    for part, outer in INSIDE.items():
        seconds[outer] -= seconds[part]
    seconds["engine and the rest"] = _cumulative(stats, RUN) - sum(seconds.values())
    breakdown = {part: round(value / records * 1e6, 1) for part, value in seconds.items() if value > 0}
    return report | {"profile_us_per_record": breakdown}


def _cumulative(stats: dict, functions: Functions) -> float:
    return sum(
        cumulative
        for (file_name, _line, function), (_calls, _primitive, _total, cumulative, _callers) in stats.items()
        for suffix, name in functions
        if function == name and file_name.endswith(suffix)
    )
