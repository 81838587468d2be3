#!/usr/bin/env bash
# Reliability drill at full size: 20,000 messages while smtp-shaper is
# SIGKILLed five times and the gateway flaps, then a spool on a 2 MiB tmpfs
# that fills up (needs root or passwordless sudo to mount it). Prints
# accepted, delivered, lost (must be 0), duplicates, and the replies seen
# with a full disk (must be 4xx). `cargo test` runs the same drill with
# 2,000 messages.
#   DRILL_MESSAGES=50000 scripts/drill.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DRILL_MESSAGES="${DRILL_MESSAGES:-20000}" \
    cargo test --release --test it drill:: -- --nocapture 2>&1 | grep -E "^drill:|test result|panicked"
