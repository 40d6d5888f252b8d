"""Per-run overhead: a no-op job run through dbkeeper, the history write included.

    python bench/run_overhead.py [--runs 200] [--cli-runs 20]

- in process: ``keeper.run("noop")`` (claim, heartbeat, run thread, finish), median ms
  per run, against a baseline of the same no-op function called directly;
- command line: ``dbkeeper run noop`` in a fresh process, median ms, against the
  interpreter's own start-up (``python -c pass``) measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dbkeeper import Keeper

CONFIG = """
[jobs.noop]
task = "python"
call = "noop_job:noop"
"""


def noop(ctx: object) -> None:
    return None


def timed(action: object, times: int) -> list[float]:
    assert callable(action)
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--cli-runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "noop_job.py").write_text("def noop(ctx):\n    return None\n")
        config = root / "dbkeeper.toml"
        config.write_text(CONFIG)
        keeper = Keeper.from_config(config)
        try:
            keeper.run("noop")  # creates the state store
            ours = timed(lambda: keeper.run("noop"), args.runs)
        finally:
            keeper.close()
        direct = timed(lambda: noop(None), args.runs)
        dbkeeper = Path(sys.executable).with_name("dbkeeper")
        cli = timed(
            lambda: subprocess.run(
                [str(dbkeeper), "run", "noop"], cwd=root, check=True, capture_output=True
            ),
            args.cli_runs,
        )
        bare = timed(
            lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
            args.cli_runs,
        )
    ms = {
        name: statistics.median(values) * 1000
        for name, values in (("run", ours), ("direct", direct), ("cli", cli), ("python", bare))
    }
    print(f"per-run overhead, median of {args.runs} in-process and {args.cli_runs} CLI runs")
    print(
        f"  keeper.run(noop):   {ms['run']:.2f} ms per run recorded "
        f"(the function alone: {ms['direct'] * 1000:.1f} us)"
    )
    print(
        f"  dbkeeper run noop:  {ms['cli']:.0f} ms per process "
        f"(python -c pass: {ms['python']:.0f} ms, ratio {ms['cli'] / ms['python']:.1f}x)"
    )


if __name__ == "__main__":
    main()
