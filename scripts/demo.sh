#!/usr/bin/env bash
# `make demo`: the queue at work in a throw-away home, end to end. Every command is printed
# as it can be pasted into a shell (quotes kept); bold only on a terminal.
set -euo pipefail
home=$(mktemp -d -t queuectl-demo.XXXXXX)
export QUEUECTL_HOME="$home"
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say() { printf '\n%s$ %s%s\n' "$bold" "$1" "$plain"; }
quoted() {    # the words as a shell would need them typed: single quotes where needed
    local out="" word q="'"
    for word in "$@"; do
        if [[ $word =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then out+="${out:+ }$word"
        else out+="${out:+ }'${word//$q/$q\\$q$q}'"; fi
    done
    printf '%s' "$out"
}
run() { say "$(quoted "$@")"; "$@"; }
cleanup() { queuectl worker stop --timeout 5 >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "demo home: $home"
echo "to paste the commands below: export QUEUECTL_HOME=$home"
echo "$home" > .venv/last-demo-home 2>/dev/null || true     # for `make dashboard`
run queuectl config set backoff_base 1.5      # short retry delays for the demo
run queuectl enqueue '{"id": "hello", "command": "echo hello from queuectl"}'
run queuectl enqueue '{"id": "urgent", "command": "echo urgent first", "priority": 10}'
run queuectl enqueue '{"id": "flaky", "command": "echo trying; exit 3", "max_retries": 2}'
run queuectl enqueue --delay 2s '{"id": "later", "command": "echo two seconds later"}'
say "cd \"\$QUEUECTL_HOME\" && echo '{\"command\": \"echo dropped in as a file\"}' > spool/tmp/d"
say "mv spool/tmp/d spool/pending/dropped.json && cd - >/dev/null"
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
