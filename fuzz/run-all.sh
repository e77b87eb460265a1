#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time, one after another.
#
#   fuzz/run-all.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60. Needs only stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz
# pass its nightly-only flags (-Zsanitizer=address and friends). FUZZ_SANITIZER=none builds
# without AddressSanitizer (faster; the fuzzed crates have no unsafe code).
#
# Each target runs as one libFuzzer process (the default; -jobs/-workers would only fork a
# child that logs to a file) with its corpus in corpus/<target>/ (new inputs go there), the
# hand-picked inputs from fixtures/ in seeds/<target>/ (read only) and its dictionary in
# dicts/<target>.dict. A crash, panic, timeout (> FUZZ_TIMEOUT seconds for one input, default
# 10) or out-of-memory stops that target, leaves the input in artifacts/<target>/ and makes the
# script exit 1 after the remaining targets ran. Afterwards each corpus is minimised with
# `cargo fuzz cmin` so that what is committed stays small (FUZZ_CMIN=0 skips that).
# Full libFuzzer output: target/fuzz-logs/<target>.log. Not part of `cargo xtask test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -eq 0 ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...] (got seconds=$seconds)" >&2
    exit 64
fi
shift || true
all_targets=(imos_parse bom_parse electricitymaps_parse pi_buoy_parse rtl_433_parse event_decode)
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

sanitizer="${FUZZ_SANITIZER:-address}"
timeout_s="${FUZZ_TIMEOUT:-10}"
cmin="${FUZZ_CMIN:-1}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi

logs="$here/target/fuzz-logs"
mkdir -p "$logs"

echo "building ${#targets[@]} target(s), sanitizer=$sanitizer" >&2
for target in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" "$target"
done

failed=()
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="$logs/$target.log"
    echo "== $target: ${seconds}s (log: $log)" >&2
    status=0
    # -max_len is above schema::MAX_EVENT_BYTES (16 KiB) so the size limit itself is reached.
    cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" \
        -timeout="$timeout_s" \
        -rss_limit_mb=2048 \
        -max_len=20000 \
        -dict="dicts/$target.dict" \
        -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)"
    stats="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
    if [[ "$status" -ne 0 ]]; then
        failed+=("$target")
        echo "!! $target FAILED (exit $status); the input is in artifacts/$target/:" >&2
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -n 5 >&2 || true
        summary+=("$target: FAILED after $(grep -cE '^#[0-9]+' "$log" || true) status lines; see $log")
    else
        summary+=("$target: ${runs:-?} runs in ${seconds}s, 0 crashes | ${stats:-no DONE line}")
    fi
    if [[ "$cmin" == "1" && "$status" -eq 0 ]]; then
        # Greedy set cover over edges (not hit counts) keeps each corpus near 200 small files.
        cargo fuzz cmin --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
            -set_cover_merge=1 -use_counters=0 -max_len=20000 -timeout="$timeout_s" \
            >>"$log" 2>&1 \
            || echo "cmin of $target failed; corpus left as it was (see $log)" >&2
    fi
done

echo
echo "date: $(date -u +%Y-%m-%dT%H:%MZ), seconds per target: $seconds, sanitizer: $sanitizer"
for line in "${summary[@]}"; do
    echo "$line"
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
