#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets: the decoders that take bytes from Kafka) for
# FUZZ_SECS each, from the committed corpus (fuzz/corpus/<target>), with cargo fuzz and
# libFuzzer. A crash fails the run and leaves its input under fuzz/artifacts/<target>/:
# make it a unit test of the decoder, and add it to the corpus.
#
#   bash scripts/fuzz.sh [target …]
#
# Environment:
#   FUZZ_SECS=20   seconds per target
#   FUZZ_MERGE=1   merge what the run found into fuzz/corpus (to commit), instead of
#                  fuzzing in a scratch copy
#
# cargo-fuzz is installed from crates.io on first use. The machine's toolchain is stable:
# the sanitizer is off (`--sanitizer none`; the decoders are safe Rust, so libFuzzer's
# coverage and panics are what finds bugs) and RUSTC_BOOTSTRAP lets cargo-fuzz pass its
# -Z flags.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECS=${FUZZ_SECS:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz…" >&2
    cargo install cargo-fuzz --locked --version 0.13.1 >&2
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
mapfile -t targets < <(if [ $# -gt 0 ]; then printf '%s\n' "$@"; else cargo fuzz list; fi)
echo "== cargo fuzz build (${#targets[@]} targets)"
cargo fuzz build --sanitizer none --release >&2
failed=0
for target in "${targets[@]}"; do
    corpus=corpus/$target
    mkdir -p "$corpus"
    if [ -n "${FUZZ_MERGE:-}" ]; then
        work=$corpus
    else
        work=$(mktemp -d "${TMPDIR:-/tmp}/kg-fuzz-$target.XXXXXX")
        cp -r "$corpus"/. "$work"/
    fi
    log=$(mktemp "${TMPDIR:-/tmp}/kg-fuzz-$target.log.XXXXXX")
    if cargo fuzz run --sanitizer none --release "$target" "$work" -- \
        -max_total_time="$FUZZ_SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1)
        echo "$target: ok, ${runs:-?} runs in ${FUZZ_SECS}s, $cov, corpus $(find "$work" -type f | wc -l) inputs"
    else
        echo "$target: FAILED; the input is under fuzz/artifacts/$target/" >&2
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 >&2
        failed=$((failed + 1))
    fi
    [ -n "${FUZZ_MERGE:-}" ] || rm -rf "$work"
done
echo "fuzz: ${#targets[@]} targets, $failed failed"
[ "$failed" = 0 ]
