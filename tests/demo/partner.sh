#!/usr/bin/env bash
# Runs the README's "Connect your own partner" walkthrough and its Invoke
# examples exactly as written: the ```sh blocks between the README's
# `<!-- partner.sh: ... -->` markers, in order, in one shell (so a variable
# one block sets is there for the next), from the repository's root. The
# first walkthrough block (build and start the local stack, "in a second
# terminal") runs in the background; the others in the foreground. Then it
# checks on the SFTP server that each step did what the README says, and
# stops the stack.
#
# Idempotent: the README works in /tmp/xecm; a stale /tmp/xecm from an
# earlier run is removed, a live one (its stack still answering) is refused.
# Leaves no process running. Installs its own prerequisites, may be called
# from any directory. tests/run.sh runs it.
set -euo pipefail

XECM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export XECM_ROOT
# shellcheck source=tests/lib/prereqs.sh
. "$XECM_ROOT/tests/lib/prereqs.sh"
ensure_all
cd "$XECM_ROOT"

DIR=/tmp/xecm # the README's working directory
ENV_FILE=$DIR/stack.env
say() { printf '==> partner.sh: %s\n' "$*" >&2; }

if [ -s "$ENV_FILE" ]; then
    endpoint=$(sed -n "s/^AWS_ENDPOINT_URL='\(.*\)'$/\1/p" "$ENV_FILE")
    if [ -n "$endpoint" ] && curl -s -o /dev/null --max-time 2 "$endpoint" 2>/dev/null; then
        say "a local stack is running with $ENV_FILE (moto at $endpoint answers); stop it (Ctrl-C in its terminal) first"
        exit 1
    fi
fi
rm -rf "$DIR"

WORK=$(mktemp -d -t xecm-partner.XXXXXX)
STACK_PID=
cleanup() {
    local rc=$?
    if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
        # The stack block runs in its own process group (setsid): stop all of it.
        kill -TERM -- "-$STACK_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$STACK_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$STACK_PID" 2>/dev/null || true
        wait "$STACK_PID" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ] && [ -s "$WORK/stack.log" ]; then
        say "the local stack's log:"
        tail -30 "$WORK/stack.log" >&2
    fi
    rm -rf "$WORK" "$DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The README's blocks, one file each: block-0.sh is the stack (background),
# the rest run in order.
python3 - README.md "$WORK" <<'PY'
import sys
readme, work = sys.argv[1], sys.argv[2]
lines = open(readme, encoding="utf-8").read().split("\n")
blocks, region, current = [], False, None
for line in lines:
    if line.startswith("<!-- partner.sh: end"):
        region = False
    elif line.startswith("<!-- partner.sh: "):
        region = True
    elif region and current is None and line == "```sh":
        current = []
    elif current is not None and line == "```":
        blocks.append("\n".join(current) + "\n")
        current = None
    elif current is not None:
        current.append(line)
if len(blocks) < 3 or "xecm-stack up" not in blocks[0]:
    sys.exit(f"{readme}: expected the walkthrough's blocks between <!-- partner.sh: --> markers, "
             f"the first starting the stack; found {len(blocks)} blocks")
for i, b in enumerate(blocks):
    open(f"{work}/block-{i}.sh", "w", encoding="utf-8").write(b)
PY
count=$(find "$WORK" -name 'block-*.sh' | wc -l)

say "step 0 (in the background, as in a second terminal): $(head -1 "$WORK/block-0.sh")"
setsid bash -c "cd '$XECM_ROOT' && . '$WORK/block-0.sh'" </dev/null >"$WORK/stack.log" 2>&1 &
STACK_PID=$!
waited=0
until [ -s "$ENV_FILE" ]; do
    if ! kill -0 "$STACK_PID" 2>/dev/null; then
        say "the local stack did not come up"
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
    if [ $((waited % 30)) = 0 ]; then say "still building / starting the local stack (${waited} s)"; fi
    if [ "$waited" -ge 1800 ]; then say "the local stack did not come up in 30 min"; exit 1; fi
done
say "local stack up after ${waited} s"

# The foreground blocks, sourced in order into one shell.
cat >"$WORK/walk.sh" <<'SH'
set -euo pipefail
cd "$XECM_ROOT"
step() { printf '\n==> partner.sh: step %s\n' "$1" >&2; sed 's/^/    $ /' "$2" >&2; }
# The plan step: its output is shown and kept, then checked against what
# the README says a run would do (the service report ready for its rule,
# the notes file failing), and that it claimed nothing.
plan_step() {
    . "$1" | tee /tmp/xecm/plan.json
    python3 - /tmp/xecm/plan.json <<'PY'
import json, sys
plan = json.load(open(sys.argv[1]))
files = {f["source_path"]: f for f in plan["files"]}
sr = files.get("SR-1001_0000200001.pdf")
notes = files.get("notes.txt")
problems = []
if not sr or sr.get("ready") is not True or sr.get("rule") != "service-report" or sr.get("action") != "create":
    problems.append(f"the service report is not planned as a ready create by rule service-report: {sr}")
if not notes or notes.get("action") != "fail":
    problems.append(f"notes.txt is not planned to fail: {notes}")
if problems:
    sys.exit("==> partner.sh: FAILED: plan: " + "; ".join(problems))
PY
    if [ -n "$(find "$XECM_SFTP_DATA_ROOT/globex/outbound/.inflight" -type f 2>/dev/null)" ]; then
        printf '==> partner.sh: FAILED: the plan claimed files\n' >&2
        exit 1
    fi
}
SH
for i in $(seq 1 $((count - 1))); do
    block="$WORK/block-$i.sh"
    printf 'step %d %q\n' "$i" "$block" >>"$WORK/walk.sh"
    if grep -q 'sftp-ingest --plan' "$block"; then
        printf 'plan_step %q\n' "$block" >>"$WORK/walk.sh"
    else
        printf '. %q\n' "$block" >>"$WORK/walk.sh"
    fi
done
# What the README says the steps did, checked on the SFTP server.
cat >>"$WORK/walk.sh" <<'SH'
root=$XECM_SFTP_DATA_ROOT
fail() { printf '==> partner.sh: FAILED: %s\n' "$*" >&2; exit 1; }
ls "$root"/globex/outbound/archive/*/SR-1001_0000200001.pdf >/dev/null 2>&1 ||
    fail "the service report was not archived after its ingest: $(find "$root/globex" -type f)"
ls "$root"/globex/outbound/failed/notes.txt >/dev/null 2>&1 ||
    fail "notes.txt is not in failed/: $(find "$root/globex" -type f)"
[ -z "$(find "$root/globex/outbound" -maxdepth 1 -type f)" ] ||
    fail "files left in the partner's directory: $(find "$root/globex/outbound" -maxdepth 1 -type f)"
find "$root/inbound/price-lists" -type f -name 'Price list EU*' | grep -q . ||
    fail "the sweep delivered no price list: $(find "$root/inbound" -path '*price*')"
find "$root/backups/critical-records" -name snapshot.json | grep -q . ||
    fail "no complete snapshot in backups/critical-records"
# Outbound (3100) held Pricing and Customer Packages; the restore adds to it.
restored=$(curl -fsS -H "OTCSTicket: $ticket" "$XECM_ECM_URL/cs/cs/api/v2/nodes/3100/nodes" |
    python3 -c 'import json, sys; print(", ".join(sorted(r["data"]["properties"]["name"] for r in json.load(sys.stdin)["results"])))')
[ "$restored" != "Customer Packages, Pricing" ] || fail "the restore added nothing to Outbound (3100)"
printf '\n==> partner.sh: every step of the walkthrough and the Invoke examples did what the README says\n' >&2
SH
bash "$WORK/walk.sh"
