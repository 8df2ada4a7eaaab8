#!/bin/sh
# fuzz.sh: runs the libFuzzer targets that `make fuzz` built
# (build-fuzz/fuzz_NAME, under ASan and UBSan). For each NAME given:
#   1. replays every input in tests/data/fuzz/NAME/ (inputs that once crashed
#      the target; each must pass now),
#   2. fuzzes for FUZZ_SECONDS (default 30) from the seeds in
#      tests/fuzz/seeds/NAME/, keeping the corpus in build-fuzz/corpus/NAME/.
# A crash is saved as build-fuzz/crash/NAME-crash-<hash>: fix the bug, then
# copy the input into tests/data/fuzz/NAME/ so it is replayed from then on.
# Prints one line per target (executions, coverage, result); exits 1 if any
# target failed. Runs from the repository root (some targets read models/tiny).
set -u
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-30}
case "$SECONDS_EACH" in '' | *[!0-9]*) echo "fuzz.sh: FUZZ_SECONDS must be a whole number of seconds" >&2; exit 2 ;; esac
[ $# -gt 0 ] || { echo "usage: tools/fuzz.sh NAME... (the Makefile's FUZZ_TARGETS)" >&2; exit 2; }
mkdir -p build-fuzz/crash
failed=0
printf '%-14s %10s %8s %6s  %s\n' target executions seconds cov result
for t in "$@"; do
    bin=build-fuzz/fuzz_$t
    log=build-fuzz/fuzz_$t.log
    [ -x "$bin" ] || { echo "fuzz.sh: $bin is not built (make fuzz-build)" >&2; exit 2; }
    result=ok
    if [ -d "tests/data/fuzz/$t" ] && [ -n "$(ls -A "tests/data/fuzz/$t")" ]; then
        if ! "$bin" -runs=1 "tests/data/fuzz/$t"/* > "$log.replay" 2>&1; then
            result="FAIL (a saved input crashes again: $log.replay)"
        fi
    fi
    mkdir -p "build-fuzz/corpus/$t"
    "$bin" -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="build-fuzz/crash/$t-" "build-fuzz/corpus/$t" "tests/fuzz/seeds/$t" > "$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    if [ $rc -ne 0 ]; then
        crash=$(grep -o "build-fuzz/crash/$t-[a-z]*-[0-9a-f]*" "$log" | tail -1)
        result="FAIL (${crash:-see $log})"
    fi
    [ "$result" = ok ] || failed=1
    printf '%-14s %10s %8s %6s  %s\n' "$t" "${execs:-?}" "${secs:-?}" "${cov:-?}" "$result"
done
exit $failed
