"""Named queues with their own worker pools: two pools on two queues never take each other's
jobs, a pool without --queue takes every queue, `worker stop --queue` stops only its pool,
and status / list --queue / metrics report per queue."""

import json

from workerkit import pid_alive, pool, read_job, states_of  # noqa: F401


def ran_on(spool, job_id):
    record = read_job(spool, job_id, "completed")["history"][0]
    return int(record["worker"].split(":")[1])


def start(pool, *args):
    ran = pool.run("worker", "start", *args, timeout=60)
    assert ran.exit_code == 0, ran.stderr
    return ran


def pids_of(pool, supervisor_line):
    inside = supervisor_line.split("(pid")[1].split(")")[0].lstrip("s ")
    return {int(p) for p in inside.split(", ")}


def test_two_pools_never_take_each_others_jobs_and_stop_by_queue(pool, spool, wait_until):
    cpu = pids_of(pool, start(pool, "--queue", "cpu", "--count", "2").stdout)
    gpu_line = start(pool, "--queue", "gpu,gpu-big", "--count", "1").stdout
    assert gpu_line.endswith("\nqueues: gpu, gpu-big\n")
    gpu = pids_of(pool, gpu_line)
    ids = {"cpu": [], "gpu": [], "gpu-big": []}
    for n in range(6):
        for queue in ids:
            ids[queue].append(pool.enqueue({"id": f"{queue}-{n}", "command": "true"},
                                           "--queue", queue))
    everything = [i for group in ids.values() for i in group]
    wait_until(lambda: all(states_of(spool, i) == ["completed"] for i in everything),
               timeout=30)
    assert {ran_on(spool, i) for i in ids["cpu"]} <= cpu
    assert {ran_on(spool, i) for i in ids["gpu"] + ids["gpu-big"]} <= gpu

    queues = {q["queue"]: q for q in pool.status()["queues"]}
    assert sorted(queues) == ["cpu", "gpu", "gpu-big"]
    assert (queues["cpu"]["completed"], queues["cpu"]["workers"]) == (6, 2)
    assert (queues["gpu-big"]["completed"], queues["gpu-big"]["workers"]) == (6, 1)

    narrowed = json.loads(pool.cli("status", "--queue", "cpu", "--json").stdout)
    assert (narrowed["queue"], narrowed["counts"]["completed"]) == ("cpu", 6)
    assert {w["pid"] for w in narrowed["workers"]} == cpu

    stopped = pool.stop("--queue", "gpu")
    assert stopped.stdout.startswith("stopped supervisor ")
    assert not any(pid_alive(p) for p in gpu) and all(pid_alive(p) for p in cpu)
    pool.enqueue({"id": "waits", "command": "true"}, "--queue", "gpu")
    pool.enqueue({"id": "runs", "command": "true"}, "--queue", "cpu")
    wait_until(lambda: states_of(spool, "runs") == ["completed"], timeout=15)
    assert states_of(spool, "waits") == ["pending"]
    why = pool.cli("why", "waits").stdout
    assert why.startswith("pending in queue 'gpu', ready, ")
    assert why.endswith(", no worker serves queue 'gpu'\n")
    assert pool.stop("--queue", "gpu").stdout == "no workers of queue 'gpu' were running\n"

    start(pool, "--count", "1")                 # a pool without --queue takes every queue
    wait_until(lambda: states_of(spool, "waits") == ["completed"], timeout=15)


def test_list_status_and_metrics_per_queue(cli, spool):
    for n, queue in enumerate(["default", "gpu", "gpu", "io"]):
        assert cli("enqueue", "--id", f"j{n}", "--queue", queue, '{"command": "true"}') \
            .exit_code == 0
    listed = json.loads(cli("list", "--queue", "gpu", "--json").stdout)
    assert [row["id"] for row in listed] == ["j1", "j2"]
    assert {row["queue"] for row in listed} == {"gpu"}
    assert cli("list", "--queue", "none").stdout.startswith("no jobs in queue 'none' in ")
    status = cli("status").stdout
    assert "queues:\nQUEUE    READY  SCHED  RUNNING  FAILED  DEAD  OLDEST  WORKERS\n" in status
    assert [line.split()[:3] for line in status.split("queues:\n")[1].splitlines()[1:4]] == \
        [["default", "1", "0"], ["gpu", "2", "0"], ["io", "1", "0"]]
    narrowed = json.loads(cli("status", "--queue", "gpu", "--json").stdout)
    assert (narrowed["counts"]["pending"], narrowed["ready"], narrowed["queues"][0]["queue"]) \
        == (2, 2, "gpu")
    assert cli("status", "--queue", "gpu").stdout.splitlines()[0].endswith("  queue: gpu")
    metrics = json.loads(cli("metrics", "--json").stdout)
    assert [(q["queue"], q["ready"], q["workers"]) for q in metrics["queues"]] == \
        [("default", 1, 0), ("gpu", 2, 0), ("io", 1, 0)]
    prometheus = cli("metrics", "--prometheus").stdout
    assert 'queuectl_queue_ready_jobs{queue="gpu"} 2\n' in prometheus
    assert 'queuectl_queue_workers{queue="io"} 0\n' in prometheus
    bad = cli("enqueue", "--queue", "no/slash", '{"command": "true"}')
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: queue must be 1-64 characters")
    bad = cli("worker", "start", "--queue", ",")
    assert (bad.exit_code, bad.stderr) == \
        (1, "Error: --queue must be queue names separated by commas, got ','\n")
