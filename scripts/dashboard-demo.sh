#!/usr/bin/env bash
# `make dashboard`: the web dashboard on the home `make demo` left (or a new one), with two
# workers and a trickle of jobs so there is something to watch. Ctrl-C stops all of it.
set -euo pipefail
home=${QUEUECTL_HOME:-$(cat .venv/last-demo-home 2>/dev/null || true)}
if [ -z "$home" ] || [ ! -d "$home" ]; then
  home=$(mktemp -d -t queuectl-demo.XXXXXX)
  queuectl --home "$home" config set backoff_base 1.5 >/dev/null
fi
export QUEUECTL_HOME="$home"
feeder=""
cleanup() {
  if [ -n "$feeder" ]; then kill "$feeder" 2>/dev/null || true; fi
  queuectl worker stop --timeout 5 >/dev/null 2>&1 || true
}
trap cleanup EXIT

feed() {    # a job a second: most succeed, some fail and retry, some are scheduled
  local i=0
  while :; do
    i=$((i + 1))
    queuectl enqueue "{\"command\": \"echo working on item $i; sleep $((i % 4 + 1)); echo item $i done\"}" >/dev/null
    if [ $((i % 5)) -eq 0 ]; then
      queuectl enqueue '{"command": "echo trying; exit 3", "max_retries": 1}' >/dev/null
    fi
    if [ $((i % 7)) -eq 0 ]; then
      queuectl enqueue --delay 30s '{"command": "echo scheduled half a minute ago"}' >/dev/null
    fi
    sleep 1
  done
}

echo "home: $home"
queuectl worker start --count 2
feed &
feeder=$!
queuectl dashboard "$@"
