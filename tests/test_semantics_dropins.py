"""The job-semantics fields work from files dropped into spool/pending/ as they do from the
CLI: `after`, `after_any`, `queue`, `retry_on` / `no_retry_on` and `unique_key`, and the
worker writes `history` into the file."""

import json

from workerkit import lines, pool, q, read_job, states_of  # noqa: F401


def test_dropped_files_use_every_semantic_field(pool, spool, drop, tmp_path, wait_until):
    log = tmp_path / "ran"
    pool.config(backoff_max=0)
    drop("base.json", json.dumps({"command": f"echo base >> {q(log)}; exit 64",
                                  "retry_on": [64], "max_retries": 1}))
    drop("next.json", json.dumps({"command": f"echo next >> {q(log)}", "after": ["base"],
                                  "after_any": True, "queue": "batch"}))
    drop("stop.json", json.dumps({"command": "exit 1", "no_retry_on": [1],
                                  "unique_key": "only-one"}))
    drop("bad-field.json", json.dumps({"command": "true", "after": "base"}), age=5)
    assert pool.run("worker", "start", "--queue", "default").exit_code == 0
    wait_until(lambda: states_of(spool, "base") == ["dead"] and
               states_of(spool, "stop") == ["dead"], timeout=20)
    assert states_of(spool, "next") == ["pending"]          # no pool serves 'batch' yet
    base = read_job(spool, "base", "dead")
    assert [r["outcome"] for r in base["history"]] == ["failed", "failed"]
    stop = read_job(spool, "stop", "dead")
    assert (stop["attempts"], stop["history"][0]["next"]) == \
        (1, "dead: exit code 1 is permanent (the job's no_retry_on)")
    assert (spool / "rejected" / "bad-field.json.reason").read_text() == \
        "after must be a list of job ids, got 'base'\n"
    assert pool.run("worker", "start", "--queue", "batch").exit_code == 0
    wait_until(lambda: states_of(spool, "next") == ["completed"], timeout=15)
    assert [w[0] for w in lines(log)] == ["base", "base", "next"]
