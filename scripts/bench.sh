#!/usr/bin/env bash
# Benchmark: dump time, restore time (restore -d: until the process runs), image size and peak
# RSS of the tool, for a tiny process (the counter) and one holding 1 GiB of incompressible
# anonymous memory. Median of BENCH_RUNS runs (default 3). Every restored process must pass
# its own memory check, or the run counts as failed.
#
# With CRIU=/path/to/criu the same workloads are also run through criu (dump -j, restore -j -d),
# alternating with cryo run by run, and the ratios cryo/criu are printed.
#
#   scripts/bench.sh                 (as root)
#   BENCH_RUNS=5 CRIU=/usr/sbin/criu scripts/bench.sh
set -euo pipefail
# Close every fd this script inherited above stderr: the programs it starts would inherit
# them, and cryo refuses to dump fds it cannot restore (a pipe from the calling shell, say).
for fd in /proc/$$/fd/*; do
	fd=${fd##*/}
	if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Become a child subreaper (kept across exec) so processes left parentless by restore -d are
# adopted and reaped here, not left as zombies holding their PIDs.
if [ -z "${CRYO_BENCH_SUBREAPER:-}" ] && command -v perl >/dev/null 2>&1; then
	export CRYO_BENCH_SUBREAPER=1
	exec perl -e 'syscall(157, 36, 1, 0, 0, 0) == 0 or die "prctl(PR_SET_CHILD_SUBREAPER): $!\n";
		exec @ARGV or die "exec: $!\n"' bash "$0" "$@"
fi

RUNS=${BENCH_RUNS:-3}
CRIU=${CRIU:-}
TIMEOUT=300

echo "building cryo (release)..."
(cd "$ROOT" && cargo build --release --quiet)
CRYO=$ROOT/target/release/cryo

WORK=$(mktemp -d /tmp/cryo-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
for w in counter bigmem; do
	cc -O1 -o "$WORK/$w" "$ROOT/tests/workloads/$w.c" -lrt
done

# Peak RSS (KiB) of a command, written to the file named by $1.
if [ -x /usr/bin/time ]; then
	measure() {
		local out=$1
		shift
		/usr/bin/time -f %M -o "$out" "$@"
	}
else
	cat >"$WORK/maxrss.c" <<'C'
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
/* maxrss OUT CMD...: runs CMD, writes its peak RSS in KiB to OUT, exits with its status. */
int main(int argc, char **argv)
{
	int status;
	struct rusage ru;
	pid_t pid = fork();
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || getrusage(RUSAGE_CHILDREN, &ru))
		return 126;
	FILE *f = fopen(argv[1], "w");
	if (f) {
		fprintf(f, "%ld\n", ru.ru_maxrss);
		fclose(f);
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
C
	cc -O1 -o "$WORK/maxrss" "$WORK/maxrss.c"
	measure() { "$WORK/maxrss" "$@"; }
fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

wait_file() { # wait_file PATH: up to TIMEOUT seconds
	local i
	for ((i = 0; i < TIMEOUT * 20; i++)); do
		[ -f "$1" ] && return 0
		sleep 0.05
	done
	return 1
}

wait_gone() { # wait_gone PID: until it no longer runs (a zombie counts as gone)
	local i state
	for ((i = 0; i < TIMEOUT * 20; i++)); do
		state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || true
		[ -z "$state" ] || [ "$state" = Z ] && return 0
		sleep 0.05
	done
	return 1
}

# One measured run: prints "dump_s restore_s image_bytes dump_rss_kib restore_rss_kib", or
# "FAIL reason".
one_run() {
	local tool=$1 bin=$2
	shift 2
	local dir img pid t0 t1 t2 t3 bytes
	dir=$(mktemp -d "$WORK/run.XXXXXX")
	img=$dir/images
	mkdir "$dir/cwd" "$img"
	(cd "$dir/cwd" && exec "$bin" "$@" >out.log 2>&1 </dev/null) &
	pid=$!
	wait_file "$dir/cwd/ready" || { echo "FAIL workload not ready"; return; }

	local dump restore
	if [ "$tool" = cryo ]; then
		dump=("$CRYO" dump -t "$pid" -D "$img")
		restore=("$CRYO" restore -D "$img" -d)
	else
		dump=("$CRIU" dump -t "$pid" -D "$img" -j)
		restore=("$CRIU" restore -D "$img" -j -d)
	fi
	t0=$(now)
	if ! measure "$dir/dump.rss" "${dump[@]}" >"$dir/dump.out" 2>&1; then
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		echo "FAIL dump: $(tail -n 1 "$dir/dump.out")"
		return
	fi
	t1=$(now)
	wait "$pid" 2>/dev/null || true
	bytes=$(du -sb "$img" | cut -f1)

	t2=$(now)
	if ! measure "$dir/restore.rss" "${restore[@]}" >"$dir/restore.out" 2>&1; then
		echo "FAIL restore: $(tail -n 1 "$dir/restore.out")"
		return
	fi
	t3=$(now)
	touch "$dir/cwd/check"
	if ! wait_file "$dir/cwd/result" || [ "$(cat "$dir/cwd/result")" != PASS ]; then
		kill -KILL "$pid" 2>/dev/null || true
		echo "FAIL restored process: $(cat "$dir/cwd/result" 2>/dev/null || echo no result)"
		return
	fi
	wait_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
	echo "$(elapsed "$t0" "$t1") $(elapsed "$t2" "$t3") $bytes $(tail -n 1 "$dir/dump.rss") $(tail -n 1 "$dir/restore.rss")"
	rm -rf "$dir"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }

TOOLS=(cryo)
[ -n "$CRIU" ] && TOOLS+=(criu)
WORKLOADS=("tiny:$WORK/counter" "1GiB:$WORK/bigmem 1024")

declare -A RESULT
for spec in "${WORKLOADS[@]}"; do
	name=${spec%%:*}
	cmd=${spec#*:}
	for tool in "${TOOLS[@]}"; do : >"$WORK/$name.$tool"; done
	for ((r = 1; r <= RUNS; r++)); do
		for tool in "${TOOLS[@]}"; do # alternate the tools run by run
			# shellcheck disable=SC2086 # cmd is "binary args"
			line=$(one_run "$tool" $cmd)
			echo "$name $tool run $r: $line"
			case $line in FAIL*) ;; *) echo "$line" >>"$WORK/$name.$tool" ;; esac
		done
	done
	for tool in "${TOOLS[@]}"; do
		f=$WORK/$name.$tool
		if [ -s "$f" ]; then
			RESULT[$name.$tool]="$(cut -d' ' -f1 "$f" | median) $(cut -d' ' -f2 "$f" | median) $(cut -d' ' -f3 "$f" | median) $(cut -d' ' -f4 "$f" | median) $(cut -d' ' -f5 "$f" | median) $(wc -l <"$f")"
		else
			RESULT[$name.$tool]="- - - - - 0"
		fi
	done
done

echo
echo "median of $RUNS runs (ok = runs whose restored process passed its check)"
printf '%-8s %-5s %10s %12s %14s %14s %16s %4s\n' workload tool dump_s restore_s image_bytes dump_rss_KiB restore_rss_KiB ok
for spec in "${WORKLOADS[@]}"; do
	name=${spec%%:*}
	for tool in "${TOOLS[@]}"; do
		# shellcheck disable=SC2086
		printf '%-8s %-5s %10s %12s %14s %14s %16s %4s\n' "$name" "$tool" ${RESULT[$name.$tool]}
	done
done

if [ -n "$CRIU" ]; then
	echo
	echo "ratios cryo/criu (below 1: cryo is faster or smaller)"
	printf '%-8s %10s %12s %14s %14s %16s\n' workload dump restore image dump_rss restore_rss
	for spec in "${WORKLOADS[@]}"; do
		name=${spec%%:*}
		read -r -a a <<<"${RESULT[$name.cryo]}"
		read -r -a b <<<"${RESULT[$name.criu]}"
		row=()
		for i in 0 1 2 3 4; do
			row+=("$(awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN {
				if (x == "-" || y == "-" || y + 0 == 0) print "-"; else printf "%.2f", x / y }')")
		done
		printf '%-8s %10s %12s %14s %14s %16s\n' "$name" "${row[@]}"
	done
fi
