"""Real processes enqueueing at the same time: no job lost, no id given twice, no error, and
a contested id won by exactly one of them."""

import json
import os
import re

PROCESSES = 8
JOBS_EACH = 500


def start_together(spawn_queuectl, inputs, *args):
    """Start one `queuectl enqueue -` per input, and only once all are running hand each its
    stdin (each reads all of it before doing anything), so they work at the same time."""
    procs = [spawn_queuectl("enqueue", "-", *args) for _ in inputs]
    for proc, data in zip(procs, inputs):
        proc.stdin.write(data.encode())
        proc.stdin.close()
    results = []
    for proc in procs:
        try:
            out = proc.stdout.read().decode()
            err = proc.stderr.read().decode()
            results.append((proc.wait(timeout=60), out, err))
        finally:
            if proc.poll() is None:
                proc.kill()
    return results


def test_eight_processes_enqueue_500_jobs_each_at_once(spawn_queuectl, cli, spool):
    inputs = ["".join(json.dumps({"command": f"echo {p} {n}", "priority": n % 5}) + "\n"
                      for n in range(JOBS_EACH)) for p in range(PROCESSES)]
    results = start_together(spawn_queuectl, inputs)
    assert [(code, err) for code, _, err in results] == [(0, "")] * PROCESSES
    printed = [line for _, out, _ in results for line in out.splitlines()]
    assert len(printed) == len(set(printed)) == PROCESSES * JOBS_EACH

    files = os.listdir(spool / "pending")
    assert len(files) == PROCESSES * JOBS_EACH
    assert sorted(f[:-len(".json")] for f in files) == sorted(printed)
    assert os.listdir(spool / "tmp") == []
    commands = set()
    for name in files:
        commands.add(json.loads((spool / "pending" / name).read_bytes())["command"])
    assert commands == {f"echo {p} {n}" for p in range(PROCESSES) for n in range(JOBS_EACH)}

    listed = cli("list", "--json")
    assert listed.exit_code == 0 and listed.stderr == ""
    rows = json.loads(listed.stdout)
    assert len(rows) == PROCESSES * JOBS_EACH
    assert sorted(r["id"] for r in rows) == sorted(printed)
    assert {r["state"] for r in rows} == {"pending"}
    report = json.loads(cli("status", "--json").stdout)
    assert report["counts"]["pending"] == PROCESSES * JOBS_EACH and report["rejected"] == 0


def test_eight_processes_enqueue_the_same_id_at_once(spawn_queuectl, cli, spool):
    inputs = [json.dumps({"id": "contested", "command": f"echo winner {p}"})
              for p in range(PROCESSES)]
    results = start_together(spawn_queuectl, inputs)
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [1] * (PROCESSES - 1), results
    winner = next(p for p, (code, _, _) in enumerate(results) if code == 0)
    assert results[winner][1:] == ("contested\n", "")
    for code, out, err in results:
        if code == 1:
            assert (out, err) == ("", "Error: a job with id 'contested' already exists\n")
    assert os.listdir(spool / "pending") == ["contested.json"]
    assert os.listdir(spool / "tmp") == []
    job = json.loads((spool / "pending" / "contested.json").read_bytes())
    assert job["command"] == f"echo winner {winner}"
    rows = json.loads(cli("list", "--json").stdout)
    assert [(r["id"], r["command"]) for r in rows] == [("contested", f"echo winner {winner}")]


def test_concurrent_dlq_retry_all_moves_each_job_once(spawn_queuectl, cli, drop, spool):
    """Several `dlq retry --all` at once: each dead job is revived by exactly one of them;
    the others report it per id (another process moved it), never crash."""
    dead = [f"d{n:03d}" for n in range(300)]
    for job_id in dead:
        drop(f"{job_id}.json", json.dumps({"command": "x", "attempts": 4, "max_retries": 3}),
             state="dead")
    assert json.loads(cli("status", "--json").stdout)["counts"]["dead"] == len(dead)
    procs = [spawn_queuectl("dlq", "retry", "--all") for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out.decode(), err.decode()))
    assert [(code in (0, 1), err) for code, _, err in results] == [(True, "")] * len(procs)
    moved = [line.split(":")[0] for _, out, _ in results for line in out.splitlines()
             if line.endswith(": moved to pending (attempts reset)")]
    assert sorted(moved) == dead
    for code, out, _ in results:
        for line in out.splitlines():
            assert line.endswith(": moved to pending (attempts reset)") or \
                re.fullmatch(r"d\d{3}: error: job 'd\d{3}' (is (pending|processing); only "
                             r"dead jobs can be retried from the DLQ|is being moved by another "
                             r"process; try again)", line), line
        assert code == (0 if all(line.endswith("(attempts reset)")
                                 for line in out.splitlines()) else 1)
    assert sorted(os.listdir(spool / "pending")) == [f"{j}.json" for j in dead]
    assert os.listdir(spool / "dead") == [] and os.listdir(spool / "processing") == []
    rows = json.loads(cli("list", "--json").stdout)
    assert sorted((r["id"], r["state"], r["attempts"]) for r in rows) == \
        [(j, "pending", 0) for j in dead]
