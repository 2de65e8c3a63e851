#!/usr/bin/env bash
# Fuzzes the parsers and sanitisers that read partner and caller input
# (fuzz/fuzz_targets, docs/fuzzing.md) with cargo fuzz (libFuzzer).
#
#   tests/fuzz.sh [--seconds 15] [--sanitizer none|address] [TARGET...]
#
# Each target starts from its checked-in seeds (fuzz/seeds/TARGET) plus the
# corpus earlier runs grew (fuzz/corpus/TARGET, not committed) and runs for
# --seconds. A finding (panic, failed property, sanitizer report) stops the
# run with libFuzzer's report and the input saved under fuzz/artifacts/;
# reproduce it with `cargo fuzz run TARGET fuzz/artifacts/TARGET/<file>`.
# tests/run.sh runs every target briefly; the long run is documented in
# docs/fuzzing.md. Prints executions and corpus size per target.
set -euo pipefail

XECM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export XECM_ROOT
# shellcheck source=tests/lib/prereqs.sh
. "$XECM_ROOT/tests/lib/prereqs.sh"

SECONDS_PER_TARGET=15
SANITIZER=none
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) SECONDS_PER_TARGET=$2; shift 2 ;;
    --sanitizer) SANITIZER=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "tests/fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
    esac
done

ensure_cargo_fuzz
cd "$XECM_ROOT/fuzz"
# cargo fuzz passes -Z flags to rustc; this lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)

# Debug assertions on (-a): integer overflow is a finding too.
log "cargo fuzz build -a -s $SANITIZER (${#TARGETS[*]} targets)"
cargo fuzz build -a -s "$SANITIZER"

status=0
printf '%-18s %12s %10s %8s\n' target executions exec/s corpus > "$XECM_ROOT/fuzz/last-run.txt"
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    extra=()
    # The sample events and Terraform examples are the route parser's seeds.
    [ "$t" = routes ] && extra=("$XECM_ROOT/events" "$XECM_ROOT/infra/examples/routes" "$XECM_ROOT/infra/examples/backups" "$XECM_ROOT/infra/examples")
    log "fuzz $t for ${SECONDS_PER_TARGET}s"
    out=$(mktemp)
    if ! cargo fuzz run -a -s "$SANITIZER" "$t" "corpus/$t" "seeds/$t" "${extra[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 >"$out" 2>&1; then
        # The failed property or panic, then libFuzzer's summary.
        grep -m1 -A4 "panicked at" "$out" >&2 || true
        grep -A12 "^SUMMARY\|^Failing input" "$out" | head -40 >&2
        log "fuzz $t: FINDING (input saved under fuzz/artifacts/$t/)"
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out" | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    printf '%-18s %12s %10s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" | tee -a "$XECM_ROOT/fuzz/last-run.txt"
    rm -f "$out"
done
exit $status
