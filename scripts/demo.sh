#!/usr/bin/env bash
# Demo: a counter process is checkpointed, disappears, and is restored with the same PID,
# carrying on counting where it stopped.
#
#   scripts/demo.sh            (as root; builds cryo in release mode first)
set -euo pipefail
# Close every fd this script inherited above stderr: the programs it starts would inherit
# them, and cryo refuses to dump fds it cannot restore (a pipe from the calling shell, say).
for fd in /proc/$$/fd/*; do
	fd=${fd##*/}
	if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Become a child subreaper (the setting survives exec), so the restored counter, which
# `restore -d` leaves without a parent, is adopted and reaped by this script rather than by
# PID 1 (which on some machines never reaps, leaving a zombie that holds the PID).
if [ -z "${CRYO_DEMO_SUBREAPER:-}" ] && command -v perl >/dev/null 2>&1; then
	export CRYO_DEMO_SUBREAPER=1
	exec perl -e 'syscall(157, 36, 1, 0, 0, 0) == 0 or die "prctl(PR_SET_CHILD_SUBREAPER): $!\n";
		exec @ARGV or die "exec: $!\n"' bash "$0" "$@"
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "building cryo (release)"
(cd "$ROOT" && cargo build --release --quiet)
CRYO=$ROOT/target/x86_64-unknown-linux-gnu/release/cryo

WORK=$(mktemp -d /tmp/cryo-demo.XXXXXX)
cc -O1 -o "$WORK/counter" "$ROOT/tests/workloads/counter.c" -lrt
mkdir "$WORK/run"
PID=
cleanup() {
	if [ -n "$PID" ] && [ -d "/proc/$PID" ]; then kill -KILL "$PID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

say "starting a counter (prints its pid and a count every 0.5 s into counter.log)"
(cd "$WORK/run" && exec "$WORK/counter" >counter.log 2>&1 </dev/null) &
for _ in $(seq 100); do [ -f "$WORK/run/ready" ] && break; sleep 0.05; done
PID=$(cut -d' ' -f1 "$WORK/run/ready")
sleep 3
run tail -n 3 "$WORK/run/counter.log"

say "checkpointing pid $PID"
run "$CRYO" dump -t "$PID" -D "$WORK/images"
wait "$PID" 2>/dev/null || true
run ls -l "$WORK/images"
run du -sh "$WORK/images"

say "the counter is gone"
run ps -p "$PID" -o pid,stat,cmd || echo "(no process $PID)"
sleep 2
run tail -n 1 "$WORK/run/counter.log"

say "restoring it (detached)"
run "$CRYO" restore -D "$WORK/images" -d --pidfile "$WORK/restored.pid"
echo "restored pid: $(cat "$WORK/restored.pid")"
run ps -p "$PID" -o pid,stat,cmd
sleep 3
say "it counts on, with the same pid"
run tail -n 5 "$WORK/run/counter.log"

say "stopping it"
run kill "$PID"
sleep 0.2
echo "done"
