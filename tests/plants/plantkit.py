"""Test-only plants: bugs put into a real queuectl process on purpose, to show that the
torture checks catch them. sitecustomize.py applies one at start-up when tests/plants
is on PYTHONPATH (torture.PLANT_ENV puts it there for one worker pool); the installed
package never contains it. QUEUECTL_TEST_PLANT picks the bug:

- no-claim-flock: a claim skips its flock, so the job file is unlocked while it runs and
  any recovery takes it for an orphan (a double claim); the claim re-assertion and the
  fencing check before finishing (which would notice the lock is not ours and refuse to
  finish) are skipped too, so the checks see what a worker without locking would do;
- unlink-before-move: finishing unlinks processing/<id> and drops the lock before writing
  and moving the new record (a reordering: a kill in between loses the job);
  QUEUECTL_TEST_PLANT_PAUSE=SECONDS makes the window that long, as a slow disk would."""

import os


def _no_claim_flock():
    from queuectl import fsops, spool
    real = fsops.flock
    spool.Spool.check_claim = lambda self, claim: None

    def flock(fd, operation, path=""):
        if os.path.basename(os.path.dirname(path)) in ("pending", "failed"):
            fsops._check("flock", path)
            return                          # the claim's lock, skipped
        return real(fd, operation, path)
    fsops.flock = flock


SLOW_STEP = float(os.environ.get("QUEUECTL_TEST_PLANT_PAUSE", "0"))


def _unlink_before_move():
    import time
    from queuectl import fsops, spool

    def finish(self, claim, data, dest):
        self.release(claim, unlink=True)     # the unlink and unlock first ...
        if SLOW_STEP:
            time.sleep(SLOW_STEP)            # (a slow disk: widens the window for a kill)
        tmp = self._write_tmp(data)          # ... then the record and its move
        fsops.rename_noreplace(tmp, self.path(dest, claim.job_id))
        fsops.fsync_dir(self.dir(dest))
    spool.Spool.finish = finish


def apply(plant):
    """Put the named bug into this process's queuectl (None: nothing)."""
    if plant == "no-claim-flock":
        _no_claim_flock()
    elif plant == "unlink-before-move":
        _unlink_before_move()
    elif plant:
        raise SystemExit(f"unknown QUEUECTL_TEST_PLANT {plant!r}")
