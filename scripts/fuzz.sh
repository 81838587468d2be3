#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ with libFuzzer's coverage instrumentation
# on stable Rust (what `cargo fuzz build --sanitizer none` does, without
# needing cargo-fuzz) and runs each for FUZZ_SECONDS (default 30). Exits
# non-zero on the first crash; the crashing input is left in fuzz/artifacts/.
# Needs a C++ compiler (libFuzzer is built from source).
# --locked: the build uses fuzz/Cargo.lock as committed and never rewrites it
# (a stale lock fails here instead of leaving `git status` dirty).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-30}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target/fuzz}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# --target keeps RUSTFLAGS off the build scripts, as cargo-fuzz does.
CARGO_TARGET_DIR="$TARGET_DIR" cargo build --locked --release --bins --target "$TRIPLE" -q || {
    echo "fuzz: the build failed; if fuzz/Cargo.lock is out of date (a dependency changed), refresh it"
    echo "fuzz: from the shipped versions: cp Cargo.lock fuzz/Cargo.lock && cargo update --workspace --manifest-path fuzz/Cargo.toml"
    exit 1
}
mkdir -p artifacts
for target in command_parser data_framing config_parse; do
    mkdir -p "corpus/$target"
    "$TARGET_DIR/$TRIPLE/release/$target" "corpus/$target" \
        -max_total_time="$SECONDS_EACH" -artifact_prefix="artifacts/$target-" 2> "artifacts/$target.log" \
        || { echo "fuzz: $target crashed; see fuzz/artifacts/$target.log"; tail -30 "artifacts/$target.log"; exit 1; }
    echo "fuzz: $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "artifacts/$target.log"), no crash"
done
