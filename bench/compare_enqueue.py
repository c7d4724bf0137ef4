"""`queuectl enqueue JSON` of two or more installs against the import floor, interleaved.

    python bench/compare_enqueue.py VENV_BEFORE VENV_AFTER [--runs 30]

Each VENV is a virtualenv with queuectl installed normally (`pip install .` of a tree, or
of `git archive REV`). One home (in $TMPDIR) serves every call; per run, each install
enqueues one job and `python -c "import click, sqlite3, json"` (the floor, with the first
venv's python) runs once, so drift and background load hit all alike. Prints the medians
and each install's ratio to the floor."""

import argparse
import os
import statistics
import subprocess
import tempfile
import time

FLOOR = "import click, sqlite3, json"
JOB = '{"command": "true"}'


def timed(argv, env):
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venvs", nargs="+")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="compare-enqueue-")
    env = dict(os.environ, QUEUECTL_HOME=home)
    subprocess.run([os.path.join(args.venvs[0], "bin", "queuectl"), "init"], env=env,
                   stdout=subprocess.DEVNULL, check=True)
    times = {venv: [] for venv in args.venvs}
    floor = []
    for _ in range(args.runs):
        for venv in args.venvs:
            times[venv].append(timed([os.path.join(venv, "bin", "queuectl"), "enqueue", JOB],
                                     env))
        floor.append(timed([os.path.join(args.venvs[0], "bin", "python"), "-c", FLOOR], env))
    base = statistics.median(floor)
    print(f"import floor: {base * 1e3:.1f} ms (median of {args.runs})")
    for venv, values in times.items():
        median = statistics.median(values)
        print(f"{venv}: enqueue {median * 1e3:.1f} ms, {median / base:.2f}x the floor")


if __name__ == "__main__":
    main()
