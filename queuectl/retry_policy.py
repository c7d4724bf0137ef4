"""The exit-code retry policy: does a failed attempt retry, or is its failure permanent?

Pure: decides from the job's own `retry_on` / `no_retry_on` lists and the config keys
`retry_exit_codes` / `permanent_exit_codes`. First match wins, in this order: the job's
retry_on, the job's no_retry_on, config retry_exit_codes (default 75, EX_TEMPFAIL), config
permanent_exit_codes (default 64-78, the sysexits usage/data/config errors); anything else
retries. Only an exit code is judged: timeouts, signals and dead workers always retry (up to
max_retries). The returned reason is what `why` and the attempt history show."""

from .config import parse_codes

_CACHE = {}


def _codes(text):
    if text not in _CACHE:
        _CACHE[text] = parse_codes(text)
    return _CACHE[text]


def permanent_reason(job, exit_code, settings):
    """None if the failure may be retried, else why it is permanent (one line)."""
    if exit_code is None:
        return None
    if exit_code in (job.get("retry_on") or ()):
        return None
    if exit_code in (job.get("no_retry_on") or ()):
        return f"exit code {exit_code} is permanent (the job's no_retry_on)"
    if exit_code in _codes(settings.retry_exit_codes):
        return None
    if exit_code in _codes(settings.permanent_exit_codes):
        return f"exit code {exit_code} is permanent (retry policy)"
    return None
