#!/usr/bin/env bash
# `make demo`: the queue at work in a throw-away home.
set -euo pipefail
home=$(mktemp -d -t queuectl-demo.XXXXXX)
export QUEUECTL_HOME="$home"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

echo "demo home: $home"
run queuectl enqueue '{"id": "hello", "command": "echo hello from queuectl"}'
run queuectl enqueue '{"id": "urgent", "command": "echo urgent", "priority": 10}'
run queuectl enqueue --delay 1h '{"id": "later", "command": "echo later"}'
say "echo '{\"command\": \"echo dropped in\"}' > \$QUEUECTL_HOME/spool/pending/dropped.json"
echo '{"command": "echo dropped in"}' > "$home/spool/pending/dropped.json"
run queuectl list
run queuectl status
run queuectl show urgent
run cat "$home/spool/pending/urgent.json"
echo
echo "the home is left at $home for you to explore (QUEUECTL_HOME=$home)"
