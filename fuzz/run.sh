#!/usr/bin/env bash
# Runs one fuzz target the way the figures in README.md were made:
#   ./run.sh <target> [seconds]   (default 1800 s or 10M runs, whichever first)
# One worker, lowest CPU priority, one rayon thread (the enclave decrypts with
# rayon); libFuzzer's own log ends up in logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"
t=$1
secs=${2:-1800}
case $t in
  ciphertext | onnx) len=1048576 ;;
  wire_request | channel_messages | sealed) len=524288 ;;
  session) len=262144 ;;
  *) len=65536 ;;
esac
mkdir -p "corpus/$t" "artifacts/$t" logs
rc=0
RAYON_NUM_THREADS=1 nice -n 19 cargo +nightly fuzz run -s none -O --debug-assertions "$t" "corpus/$t" -- \
  -workers=1 -jobs=1 -max_total_time="$secs" -runs=10000000 -rss_limit_mb=4096 \
  -max_len="$len" -timeout=60 -print_final_stats=1 \
  -artifact_prefix="artifacts/$t/" >"logs/$t.cargo.log" 2>&1 || rc=$?
# With -jobs, libFuzzer writes its output to fuzz-0.log in the working directory.
if [ -f fuzz-0.log ]; then mv fuzz-0.log "logs/$t.log"; fi
exit $rc
