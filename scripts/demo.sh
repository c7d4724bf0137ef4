#!/usr/bin/env bash
# `make demo`: the queue at work in a throw-away home, end to end.
set -euo pipefail
home=$(mktemp -d -t queuectl-demo.XXXXXX)
export QUEUECTL_HOME="$home"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }
cleanup() { queuectl worker stop --timeout 5 >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "demo home: $home"
echo "$home" > .venv/last-demo-home 2>/dev/null || true     # for `make dashboard`
run queuectl config set backoff_base 1.5      # short retry delays for the demo
run queuectl enqueue '{"id": "hello", "command": "echo hello from queuectl"}'
run queuectl enqueue '{"id": "urgent", "command": "echo urgent first", "priority": 10}'
run queuectl enqueue '{"id": "flaky", "command": "echo trying; exit 3", "max_retries": 2}'
run queuectl enqueue --delay 2s '{"id": "later", "command": "echo two seconds later"}'
say "echo '{\"command\": \"echo dropped in as a file\"}' > spool/tmp/d && mv spool/tmp/d spool/pending/dropped.json"
echo '{"command": "echo dropped in as a file"}' > "$home/spool/tmp/d"
mv "$home/spool/tmp/d" "$home/spool/pending/dropped.json"
run queuectl list
run queuectl worker start --count 2
say "queuectl wait hello urgent later dropped flaky --timeout 30"
queuectl wait hello urgent later dropped flaky --timeout 30 || true
run queuectl status
run queuectl logs urgent
run queuectl logs flaky
run queuectl dlq list
run queuectl show flaky
run queuectl metrics
run queuectl worker stop
echo
echo "the home is left at $home for you to explore: export QUEUECTL_HOME=$home"
echo "watch it in a browser, with workers and new jobs arriving: make dashboard"
echo "(or just the dashboard: .venv/bin/queuectl --home $home dashboard)"
