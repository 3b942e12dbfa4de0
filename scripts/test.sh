#!/usr/bin/env bash
# The test command of the README: formatting, lints (the crate and the parasite blob crate),
# the whole test suite, the soak (tests/soak.rs, CRYO_SOAK_CYCLES dump/restore cycles, 100 by
# default), fuzzing of the image readers (scripts/fuzz.sh, CRYO_FUZZ_SECS seconds per target,
# 20 by default; CRYO_FUZZ_SECS=0 leaves it out), and a summary with each step's time. Exit
# status 0 only if every step passed.
#
# Integration tests that dump or restore serialize themselves (a lock in tests/common); tests
# that need something this machine lacks print "SKIP: ..." and are listed in the summary.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Tools the tests use, as "command:debian-package".
NEEDED=(cc:gcc mount:mount umount:mount ip:iproute2 nft:nftables iptables:iptables ip6tables:iptables)

install_missing() {
	local missing=() pair
	for pair in "${NEEDED[@]}"; do
		command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "== installing: ${missing[*]}"
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "   no apt-get; tests needing them will be skipped"
		return 0
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "   not root; tests needing them will be skipped"
		return 0
	fi
	# Without network this fails; the tests then skip what needs the missing tools.
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null 2>&1; then
		apt-get update >/dev/null 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null 2>&1 ||
			echo "   could not install ${missing[*]} (no network?); continuing"
	fi
}

declare -a STEPS=() RESULTS=()
FAILED=0

step() {
	local name=$1 start=$SECONDS
	shift
	echo "== $name: $*"
	if "$@"; then
		RESULTS+=("ok      $name ($((SECONDS - start)) s)")
	else
		RESULTS+=("FAILED  $name ($((SECONDS - start)) s)")
		FAILED=1
	fi
	STEPS+=("$name")
}

install_missing

step "rustfmt" cargo fmt --all -- --check
step "clippy" cargo clippy --all-targets -- -D warnings
if [ -f parasite/Cargo.toml ]; then
	step "clippy (parasite)" cargo clippy --manifest-path parasite/Cargo.toml -- -D warnings
else
	echo "== clippy (parasite): skipped, parasite/Cargo.toml does not exist yet"
	RESULTS+=("skipped clippy (parasite): no parasite/Cargo.toml")
fi

mkdir -p target/tmp
rm -f target/tmp/skips.log
TEST_LOG=target/test-output.log
run_tests() {
	cargo test --all-targets --no-fail-fast 2>&1 | tee "$TEST_LOG"
	return "${PIPESTATUS[0]}"
}
step "tests" run_tests

SOAK_LOG=target/soak-output.log
run_soak() {
	cargo test --test soak -- --ignored --nocapture 2>&1 | tee "$SOAK_LOG"
	return "${PIPESTATUS[0]}"
}
step "soak" run_soak

FUZZ_SECS=${CRYO_FUZZ_SECS:-20}
if [ "$FUZZ_SECS" -gt 0 ]; then
	step "fuzz" scripts/fuzz.sh "$FUZZ_SECS"
else
	echo "== fuzz: left out (CRYO_FUZZ_SECS=0)"
	RESULTS+=("skipped fuzz: CRYO_FUZZ_SECS=0")
fi

echo
echo "================ summary ================"
printf '%s\n' "${RESULTS[@]}"
if [ -f "$TEST_LOG" ]; then
	cat "$TEST_LOG" "$SOAK_LOG" 2>/dev/null | awk '/^test result:/ {
		for (i = 1; i <= NF; i++) {
			if ($(i + 1) ~ /^passed/) p += $i
			if ($(i + 1) ~ /^failed/) f += $i
			if ($(i + 1) ~ /^ignored/) g += $i
		}
	} END { printf "tests: %d passed, %d failed, %d ignored\n", p, f, g }'
	cat "$TEST_LOG" "$SOAK_LOG" 2>/dev/null | grep -E '^test .* FAILED$' | sed 's/^/  /' || true
	grep -h '^soak:' "$SOAK_LOG" 2>/dev/null || true
fi
echo "total time: $SECONDS s"
if [ -s target/tmp/skips.log ]; then
	echo "skipped (the machine lacks something):"
	sed 's/^/  /' target/tmp/skips.log
fi
if [ "$FAILED" -eq 0 ]; then
	echo "ALL PASSED"
else
	echo "SOME STEPS FAILED"
fi
exit "$FAILED"
