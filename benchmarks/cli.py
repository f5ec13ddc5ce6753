"""Command-line start-up: wall time of ``mscate --help``, ``--version`` and the subcommands' help, each in a
new process (median of five), against a bare ``python -c pass`` in the same run.

    python benchmarks/cli.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = [["--help"], ["--version"], ["init", "--help"], ["run", "--help"], ["report", "--help"]]


def wall(cmd: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    bare = wall([sys.executable, "-c", "pass"])
    print(f"python -c pass           {bare:6.3f} s")
    for args in COMMANDS:
        t = wall([sys.executable, "-m", "pipeline.cli", *args])
        print(f"mscate {' '.join(args):<17s} {t:6.3f} s  ({t / bare:4.1f}x bare python)")


if __name__ == "__main__":
    main()
