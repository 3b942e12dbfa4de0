#!/usr/bin/env bash
# Benchmark: dump time, restore time (restore -d: until the process runs), image size and peak
# RSS of the tool, for these workloads:
#
#   tiny   the counter (a few hundred KiB of memory)
#   1GiB   1 GiB of incompressible anonymous memory plus 256 MiB of touched-but-zero memory
#          (present pages holding zeros)
#   tree   tests/workloads/tree: 13 live processes over 4 levels and a zombie, in their own
#          session with two process groups (a few hundred KiB each)
#   tree320 tests/workloads/memtree 3 2 32: 10 processes over 3 levels, each with 32 MiB of
#          its own incompressible data and 1 MiB read through (the zero page), a quarter of it
#          written since (several processes' memory dumped and restored at once)
#   tcp    a server on loopback (tests/workloads/net_tcp_server) with an established
#          connection to a client outside the dumped tree and one to its own child, both
#          streaming and with both queues full at dump; dumped and restored with
#          --tcp-established (cryo's and criu's network locks both at work)
#
# Three "tools" run on the same workloads, alternating run by run in a new order each round
# (floor cryo criu, criu floor cryo, cryo criu floor, ...), and the table shows the median of
# BENCH_RUNS runs (default 3; 6 balances the order fully) of each:
#
#   floor  the machine's limit, measured in the same run: a plain program that writes the
#          workload's non-zero bytes to the images' filesystem, starting writeback as it goes,
#          and fsyncs them (the floor for dump; cryo's dump is durable too), then, once the
#          workload is killed, one that faults in and fills the same amount of fresh memory
#          (the floor for restore). It runs in the same slot as the tools (workload started,
#          "dump", workload killed, "restore"), so that it meets the same memory conditions.
#   cryo   target/x86_64-unknown-linux-gnu/release/cryo (built here, see .cargo/config.toml).
#   criu   only when CRIU names a criu binary: `criu dump -j`, `criu restore -j -d`. (-j because
#          the workload's session and process group are this script's, outside the dumped
#          tree; no terminal is involved.)
#
# Every cryo and criu run must end with the restored process passing its own check, or the
# run counts as failed. Ratios cryo/criu and cryo/floor are printed at the end.
#
#   scripts/bench.sh                              (as root)
#   BENCH_RUNS=5 CRIU=/path/to/criu scripts/bench.sh
#   BENCH_DIR=/some/fs scripts/bench.sh           (where images go; default /tmp)
#   BENCH_SETTLE=0 scripts/bench.sh               (no pause before big runs; see SETTLE)
#   BENCH_ONLY="tiny tcp" scripts/bench.sh        (only these workloads)
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
# Seconds to wait before each run of a big workload. On the VM this was developed on, memory
# freed a moment ago is fast to touch again, while memory freed a few seconds earlier has been
# handed back to the host (free page reporting) and costs a host fault per page on first
# touch: 1 GiB of page cache took 0.3-0.6 s to write right after a 1 GiB file was deleted and
# 1.4-3.3 s four seconds later. Waiting first lets every tool meet the same (cold) memory,
# whatever the run before it freed.
SETTLE=${BENCH_SETTLE:-4}

if [ -n "$CRIU" ] && ! "$CRIU" --version >/dev/null 2>&1; then
	echo "CRIU=$CRIU does not run; comparing without it" >&2
	CRIU=
fi

echo "building cryo (release)..."
(cd "$ROOT" && cargo build --release --quiet)
CRYO=$ROOT/target/x86_64-unknown-linux-gnu/release/cryo

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/cryo-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
for w in counter bigmem tree memtree net_tcp_server net_tcp_client; do
	cc -O1 -o "$WORK/$w" "$ROOT/tests/workloads/$w.c" -lrt
done

# The floor programs.
cat >"$WORK/floor.c" <<'C'
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
/*
 * floor dump FILE BYTES: writes BYTES of non-zero data to FILE in 256 KiB writes (the fastest
 * size measured here: 1 MiB writes were 2-3 times slower), starting writeback every 32 MiB so
 * that the disk works while it writes, and fsyncs it.
 * floor restore BYTES: maps BYTES of fresh anonymous memory and fills it with non-zero bytes.
 */
int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "dump")) {
		size_t left = strtoull(argv[3], NULL, 10), chunk = 256 << 10;
		uint64_t *buf = aligned_alloc(4096, chunk), x = 0x9E3779B97F4A7C15ULL;
		for (size_t i = 0; i < chunk / 8; i++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			buf[i] = x | 1;
		}
		int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0)
			return perror("open"), 1;
		off_t done = 0, flushed = 0;
		while (left) {
			size_t n = left < chunk ? left : chunk;
			buf[0]++;
			if (write(fd, buf, n) != (ssize_t)n)
				return perror("write"), 1;
			left -= n;
			done += n;
			if (done - flushed >= 32 << 20) {
				sync_file_range(fd, flushed, done - flushed, SYNC_FILE_RANGE_WRITE);
				flushed = done;
			}
		}
		if (fsync(fd) || close(fd))
			return perror("fsync"), 1;
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "restore")) {
		size_t len = strtoull(argv[2], NULL, 10);
		char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			return perror("mmap"), 1;
		memset(m, 0x5a, len);
		return m[len / 2] != 0x5a;
	}
	fprintf(stderr, "usage: floor dump FILE BYTES | floor restore BYTES\n");
	return 2;
}
C
cc -O2 -o "$WORK/floor" "$WORK/floor.c"

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

# stamp VAR: sets VAR to the wall-clock time in seconds, from bash's own clock when it has one
# (no process is started, so nothing but the measured command lies between two stamps).
if [ -n "${EPOCHREALTIME:-}" ]; then
	stamp() { printf -v "$1" '%s' "${EPOCHREALTIME/,/.}"; }
else
	stamp() { printf -v "$1" '%s' "$(date +%s.%N)"; }
fi
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

# kill_tree PID: SIGKILL to PID and every descendant (a workload's children would otherwise
# wait for a check that never comes, and keep running after the run).
kill_tree() {
	local p kids=()
	for p in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		kids+=("$p")
	done
	kill -KILL "$1" 2>/dev/null || true
	for p in "${kids[@]}"; do
		kill_tree "$p"
	done
}

# One measured run: prints "dump_s restore_s image_bytes dump_rss_kib restore_rss_kib", or
# "FAIL reason".
one_run() {
	local tool=$1 floor_bytes=$2 bin=$3
	shift 3
	local dir img pid t0 t1 t2 t3 bytes client='' tcp=()
	dir=$(mktemp -d "$WORK/run.XXXXXX")
	img=$dir/images
	mkdir "$dir/cwd" "$img"
	if [ "${bin##*/}" = net_tcp_server ]; then
		# A fresh port each run (the last run's connections may linger in TIME_WAIT); the
		# client, outside the dumped tree, connects once the server listens.
		local port=$((20000 + RANDOM % 20000))
		set -- - 4 127.0.0.1 "$port" 1 $((8 << 20))
		"$WORK/net_tcp_client" - 4 127.0.0.1 "$port" 1 $((8 << 20)) 3 >"$dir/client.log" 2>&1 </dev/null &
		client=$!
		tcp=(--tcp-established)
	fi
	(cd "$dir/cwd" && exec "$bin" "$@" >out.log 2>&1 </dev/null) &
	pid=$!
	wait_file "$dir/cwd/ready" || { echo "FAIL workload not ready"; return; }

	local dump restore
	case $tool in
	floor)
		dump=("$WORK/floor" dump "$img/pages.img" "$floor_bytes")
		restore=("$WORK/floor" restore "$floor_bytes")
		;;
	cryo)
		dump=("$CRYO" dump -t "$pid" -D "$img" --print-stats "${tcp[@]}")
		restore=("$CRYO" restore -D "$img" -d --print-stats)
		;;
	criu)
		dump=("$CRIU" dump -t "$pid" -D "$img" -j "${tcp[@]}")
		restore=("$CRIU" restore -D "$img" -j -d "${tcp[@]}")
		;;
	esac
	stamp t0
	if ! measure "$dir/dump.rss" "${dump[@]}" >"$dir/dump.out" 2>&1; then
		kill_tree "$pid"
		wait "$pid" 2>/dev/null || true
		echo "FAIL dump: $(tail -n 1 "$dir/dump.out")"
		return
	fi
	stamp t1
	[ "$tool" = floor ] && kill_tree "$pid"
	wait "$pid" 2>/dev/null || true
	bytes=$(du -sb "$img" | cut -f1)

	stamp t2
	if ! measure "$dir/restore.rss" "${restore[@]}" >"$dir/restore.out" 2>&1; then
		echo "FAIL restore: $(tail -n 1 "$dir/restore.out")"
		return
	fi
	stamp t3
	if [ "$tool" != floor ]; then
		touch "$dir/cwd/check"
		if ! wait_file "$dir/cwd/result" || [ "$(cat "$dir/cwd/result")" != PASS ]; then
			kill_tree "$pid"
			echo "FAIL restored process: $(cat "$dir/cwd/result" 2>/dev/null || echo no result)"
			return
		fi
		wait_gone "$pid" || kill_tree "$pid"
	fi
	if [ -n "$client" ]; then
		if ! wait "$client"; then
			echo "FAIL client: $(cat "$dir/client.log")"
			return
		fi
	fi
	if [ -n "${BENCH_KEEP_STATS:-}" ] && [ "$tool" = cryo ]; then
		cat "$dir/dump.out" "$dir/restore.out" >>"$WORK/stats.log"
	fi
	echo "$(elapsed "$t0" "$t1") $(elapsed "$t2" "$t3") $bytes $(tail -n 1 "$dir/dump.rss") $(tail -n 1 "$dir/restore.rss")"
	rm -rf "$dir"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }

TOOLS=(floor cryo)
[ -n "$CRIU" ] && TOOLS+=(criu)
# name:floor_bytes:command (floor_bytes 0: no floor for this workload)
WORKLOADS=("tiny:0:$WORK/counter" "1GiB:$((1 << 30)):$WORK/bigmem 1024 256" "tree:0:$WORK/tree" "tree320:$((320 << 20)):$WORK/memtree 3 2 32" "tcp:0:$WORK/net_tcp_server")
# BENCH_ONLY="tiny tcp" runs only those workloads.
if [ -n "${BENCH_ONLY:-}" ]; then
	keep=()
	for w in "${WORKLOADS[@]}"; do
		case " $BENCH_ONLY " in *" ${w%%:*} "*) keep+=("$w") ;; esac
	done
	WORKLOADS=("${keep[@]}")
fi

echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(uname -sr); $(nproc) CPUs: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)"
echo "images on $(df -T "$WORK" | awk 'NR == 2 { print $2 " (" $1 ")" }'); $RUNS runs of each, alternating ${TOOLS[*]}"

declare -A RESULT
for spec in "${WORKLOADS[@]}"; do
	name=${spec%%:*}
	rest=${spec#*:}
	floor_bytes=${rest%%:*}
	cmd=${rest#*:}
	for tool in "${TOOLS[@]}"; do : >"$WORK/$name.$tool"; done
	for ((r = 1; r <= RUNS; r++)); do
		# Alternate the tools run by run, in another order each round: over 3 rounds each tool
		# runs once in every position, over 6 it also follows each other tool equally often
		# (a run can leave the machine slower for the next one).
		if [ ${#TOOLS[@]} = 3 ]; then
			orders=("0 1 2" "2 0 1" "1 2 0" "0 2 1" "1 0 2" "2 1 0")
		else
			orders=("0 1" "1 0")
		fi
		order=()
		for i in ${orders[$(((r - 1) % ${#orders[@]}))]}; do order+=("${TOOLS[$i]}"); done
		for tool in "${order[@]}"; do
			[ "$tool" = floor ] && [ "$floor_bytes" = 0 ] && continue
			[ "$floor_bytes" != 0 ] && sleep "$SETTLE"
			# shellcheck disable=SC2086 # cmd is "binary args"
			line=$(one_run "$tool" "$floor_bytes" $cmd)
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
[ -n "${BENCH_KEEP_STATS:-}" ] && [ -f "$WORK/stats.log" ] && cp "$WORK/stats.log" "$BENCH_KEEP_STATS"

echo
echo "median of $RUNS runs (ok = runs that succeeded; for cryo and criu, whose restored process passed its check)"
printf '%-8s %-5s %10s %12s %14s %14s %16s %4s\n' workload tool dump_s restore_s image_bytes dump_rss_KiB restore_rss_KiB ok
for spec in "${WORKLOADS[@]}"; do
	name=${spec%%:*}
	for tool in "${TOOLS[@]}"; do
		# shellcheck disable=SC2086
		printf '%-8s %-5s %10s %12s %14s %14s %16s %4s\n' "$name" "$tool" ${RESULT[$name.$tool]}
	done
done

ratio() { # ratio X Y: X / Y with two decimals, or "-"
	awk -v x="$1" -v y="$2" 'BEGIN { if (x == "-" || y == "-" || y + 0 == 0) print "-"; else printf "%.2f", x / y }'
}

echo
echo "ratios (below 1: cryo is faster or smaller)"
header=(workload)
[ -n "$CRIU" ] && header+=(dump/criu restore/criu image/criu dump_rss/criu restore_rss/criu)
header+=(dump/floor restore/floor)
printf '%-8s' "${header[0]}"
printf ' %16s' "${header[@]:1}"
echo
for spec in "${WORKLOADS[@]}"; do
	name=${spec%%:*}
	read -r -a a <<<"${RESULT[$name.cryo]}"
	read -r -a f <<<"${RESULT[$name.floor]}"
	row=()
	if [ -n "$CRIU" ]; then
		read -r -a b <<<"${RESULT[$name.criu]}"
		for i in 0 1 2 3 4; do row+=("$(ratio "${a[$i]}" "${b[$i]}")"); done
	fi
	row+=("$(ratio "${a[0]}" "${f[0]}")" "$(ratio "${a[1]}" "${f[1]}")")
	printf '%-8s' "$name"
	printf ' %16s' "${row[@]}"
	echo
done
