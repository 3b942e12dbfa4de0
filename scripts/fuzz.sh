#!/usr/bin/env bash
# Fuzzes cryo's image readers: every target of fuzz/ (cargo-fuzz, nightly toolchain) runs for
# SECONDS_PER_TARGET seconds (default 20), starting from a seed corpus made from real
# checkpoints (tests/robust.rs, fuzz_seed_corpus).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# By default each run starts from the seeds alone, so that its time goes to fuzzing rather than
# to replaying what earlier runs found. CRYO_FUZZ_KEEP=1 keeps what the fuzzer finds in
# fuzz/corpus/TARGET/ (not committed) and starts from there next time, for longer sessions.
#
# Exit status: 0 when every target ran without finding anything, or when fuzzing is not
# possible here (no nightly toolchain, cargo-fuzz not installable): then it says SKIP loudly
# and notes it in target/tmp/skips.log. 1 when a target crashed; the input is saved in
# fuzz/artifacts/TARGET/ (replay it with `cargo +nightly fuzz run --sanitizer none TARGET FILE`).
#
# Targets are built without a sanitizer (--sanitizer none): the readers are safe Rust, so
# AddressSanitizer would find nothing the Rust checks do not, at twice the build time and a
# fraction of the speed. Debug assertions and overflow checks are on.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS=${1:-20}
TARGETS=(image_file checkpoint_dir verify_pages)
INSTALL_TIMEOUT=${CRYO_FUZZ_INSTALL_TIMEOUT:-600}

skip() {
	echo "SKIP: fuzzing: $1"
	mkdir -p target/tmp
	echo "scripts/fuzz.sh: $1" >>target/tmp/skips.log
	exit 0
}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
	skip "no nightly toolchain (rustup toolchain install nightly)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "== installing cargo-fuzz (at most ${INSTALL_TIMEOUT} s)"
	if ! timeout "$INSTALL_TIMEOUT" cargo install cargo-fuzz --locked >target/cargo-fuzz-install.log 2>&1; then
		tail -5 target/cargo-fuzz-install.log 2>/dev/null
		skip "cargo-fuzz is not installed and could not be installed (no network?)"
	fi
fi

# The seed corpus, made afresh from a synthetic and (as root) a real checkpoint.
SEEDS=target/fuzz-seeds
rm -rf "$SEEDS"
mkdir -p "$SEEDS"
echo "== fuzz seeds: tests/robust.rs fuzz_seed_corpus"
if ! CRYO_FUZZ_CORPUS="$PWD/$SEEDS" cargo test -q --test robust fuzz_seed_corpus -- \
	--ignored --exact >target/fuzz-seeds.log 2>&1; then
	cat target/fuzz-seeds.log
	echo "FAILED: generating the fuzz seed corpus"
	exit 1
fi
grep -h '^SKIP' target/fuzz-seeds.log || true

if ! cargo fmt --manifest-path fuzz/Cargo.toml -- --check; then
	echo "FAILED: fuzz/ is not formatted (cargo fmt --manifest-path fuzz/Cargo.toml)"
	exit 1
fi

echo "== building the fuzz targets"
if ! cargo +nightly fuzz build --sanitizer none; then
	echo "FAILED: building the fuzz targets"
	exit 1
fi

# The targets write scratch checkpoints: into a directory of our own, on a tmpfs if there is
# one, removed at the end.
SHM=/tmp
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
	SHM=/dev/shm
fi
FUZZ_TMP=$(mktemp -d "$SHM/cryo-fuzz.XXXXXX")
trap 'rm -rf "$FUZZ_TMP"' EXIT
export TMPDIR=$FUZZ_TMP

FAILED=0
for t in "${TARGETS[@]}"; do
	if [ "${CRYO_FUZZ_KEEP:-0}" = 1 ]; then
		corpus="fuzz/corpus/$t"
	else
		corpus="$FUZZ_TMP/corpus-$t"
	fi
	mkdir -p "$corpus" "$SEEDS/$t"
	echo "== fuzz $t: ${SECS} s, $(ls "$SEEDS/$t" | wc -l) seeds, $(ls "$corpus" | wc -l) in $corpus"
	log="target/fuzz-$t.log"
	# -timeout: one input may take at most 10 s; -rss_limit_mb: no input may make the readers
	# allocate much (records are capped at 16 MiB before allocation).
	if cargo +nightly fuzz run --sanitizer none "$t" "$corpus" "$SEEDS/$t" -- \
		-max_total_time="$SECS" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
		>"$log" 2>&1; then
		grep -E '^Done|stat::number_of_executed_units' "$log" | sed 's/^/   /'
		grep -E '#[0-9]+.*(DONE|INITED)' "$log" | tail -1 | sed 's/^/   /'
	else
		FAILED=1
		tail -40 "$log"
		echo "FAILED: fuzz target $t found a problem (input in fuzz/artifacts/$t/, log in $log)"
	fi
done
exit "$FAILED"
