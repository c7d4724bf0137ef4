"""The floor of a durable file spool, for the hot path's drain (bench_hotpath.py): what any
implementation of DESIGN.md's contract pays per job on this disk, whatever its language.

Two processes (the 2 workers) take prefilled job files and do, per job, only the file
operations the contract and the power-loss model need, nothing else: the claim (rename
pending/ -> processing/, read), the output log (create), the spawn of `sh -c true` with the
log as stdout/stderr (posix_spawn, setsid) and its wait, the finishing move (a new record
in tmp/ written and fsynced, pending/ fsynced so the claim is durable first, rename into
completed/, completed/ fsynced), and the unlink of processing/. No index, no validation, no
history, no heartbeats, no flock. With fsync=False the same without the three fsyncs: what
the disk's durability costs on top.

So a queue that keeps the contract cannot drain faster than this on the same disk: if this
loop is below a goal, the goal is out of reach of the file layout, not of queuectl's code."""

import json
import os
import time


def _worker(spool, ids, fsync, env):
    pending, processing, completed, tmp, output = (
        os.path.join(spool, d) for d in ("pending", "processing", "completed", "tmp", "output"))
    pending_fd = os.open(pending, os.O_RDONLY | os.O_DIRECTORY)
    completed_fd = os.open(completed, os.O_RDONLY | os.O_DIRECTORY)
    for job_id in ids:
        name = f"{job_id}.json"
        os.rename(os.path.join(pending, name), os.path.join(processing, name))
        fd = os.open(os.path.join(processing, name), os.O_RDWR)
        data = os.pread(fd, 65536, 0)
        log = os.open(os.path.join(output, f"{job_id}.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "true"], env, setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, log, 1),
                                           (os.POSIX_SPAWN_DUP2, log, 2)])
        os.waitpid(pid, 0)
        os.close(log)
        record = os.path.join(tmp, job_id)
        rfd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(rfd, data.rstrip(b"}\n") + b', "exit_code": 0}\n')
        if fsync:
            os.fsync(rfd)
        os.close(rfd)
        if fsync:
            os.fsync(pending_fd)
        os.rename(record, os.path.join(completed, name))
        if fsync:
            os.fsync(completed_fd)
        os.unlink(os.path.join(processing, name))
        os.close(fd)


def drain(scratch, total, slots=2, fsync=True):
    """Jobs/s of `slots` processes draining `total` prefilled jobs. The prefilled files are
    made durable before the clock starts (as `enqueue -` makes queuectl's), and the spool is
    left in `scratch` for the caller to remove after the whole run: deleting thousands of
    files here would slow the file creations of whatever is measured next on an ext4 without
    a journal (see bench_workers.fs_type)."""
    spool = os.path.join(scratch, f"durable-floor-{os.getpid()}-{time.monotonic_ns()}")
    for d in ("pending", "processing", "completed", "tmp", "output"):
        os.makedirs(os.path.join(spool, d))
    for i in range(total):
        with open(os.path.join(spool, "pending", f"f{i}.json"), "w") as f:
            f.write(json.dumps({"id": f"f{i}", "command": "true"}) + "\n")
    env = dict(os.environ)
    os.sync()
    started = time.perf_counter()
    pids = []
    for k in range(slots):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _worker(spool, [f"f{i}" for i in range(k, total, slots)], fsync, env)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
    elapsed = time.perf_counter() - started
    done = len(os.listdir(os.path.join(spool, "completed")))
    if failed or done != total:
        raise RuntimeError(f"the durable floor loop completed {done} of {total} jobs")
    return {"jobs_per_s": total / elapsed}
