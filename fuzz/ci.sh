#!/usr/bin/env bash
# Run each fuzz target for a bounded time; any crash fails the run.
#   fuzz/ci.sh SECONDS TARGET...
# Called by `make fuzz-ci` / `make fuzz` after `cargo fuzz build` (same flags,
# so `cargo fuzz run` does not rebuild). Needs CARGO_TARGET_DIR-style
# FUZZ_TARGET_DIR and FUZZ_WORK_DIR in the environment (the Makefile sets
# them) and RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly -Z flags).
#
# New inputs go to $FUZZ_WORK_DIR/corpus/<target> (kept between runs, so
# later runs start from earlier coverage); the committed seeds in
# fuzz/corpus/<target> are read, never written. Crash inputs are saved in
# fuzz/artifacts/<target>/ and their paths printed.
set -uo pipefail

seconds=${1:?usage: fuzz/ci.sh SECONDS TARGET...}
shift
cd "$(dirname "$0")"
: "${FUZZ_TARGET_DIR:?}" "${FUZZ_WORK_DIR:?}"
# Same flags as the build in the Makefile (`-a`: debug assertions and
# overflow checks on).
flags=(-a --target-dir "$FUZZ_TARGET_DIR")

failed=()
summary=()
for t in "$@"; do
    work="$FUZZ_WORK_DIR/corpus/$t"
    mkdir -p "$work" "artifacts/$t"
    log="$FUZZ_WORK_DIR/$t.log"
    echo "== fuzz $t for ${seconds}s (log: $log)"
    before=$(find "$PWD/artifacts/$t" -type f | sort)
    cargo fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    summary+=("$(printf '%-13s rc=%-3s execs=%-10s execs/s=%-7s cov=%s' "$t" "$rc" "${execs:-?}" "${rate:-?}" "${cov:-?}")")
    new=$(comm -13 <(echo "$before") <(find "$PWD/artifacts/$t" -type f | sort))
    if [ "$rc" -ne 0 ] || [ -n "$new" ]; then
        failed+=("$t")
        echo "!! fuzz target $t FAILED (exit $rc); last lines of $log:"
        tail -n 40 "$log"
        echo "!! crash artifacts:"
        echo "${new:-none written; see the log}"
    fi
done

echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all fuzz targets ran ${seconds}s without a crash"
