#!/usr/bin/env bash
# backup-snapshot demo on a running local stack (tests/demo.sh loads its env):
#  1. a full snapshot of the seeded business workspaces (node 3000) to SFTP,
#  2. one document gets a new version in the ECM,
#  3. an incremental snapshot (only that document's bytes are copied),
#  4. both snapshots verified (every file re-hashed against its manifest),
#  5. the incremental snapshot restored into an empty ECM folder, every
#     restored document's SHA-256 checked: the DR drill.
# Needs: XECM_ROOT, XECM_ECM_URL, XECM_SFTP_DATA_ROOT, XECM_SFTP_SECRET_ID, AWS_* (moto).
set -euo pipefail

: "${XECM_ROOT:?}" "${XECM_ECM_URL:?}" "${XECM_SFTP_DATA_ROOT:?}" "${XECM_SFTP_SECRET_ID:?}"
BIN=${XECM_BIN:-$XECM_ROOT/target/debug}
API="$XECM_ECM_URL/cs/cs/api"
# shellcheck source=tests/demo/lib.sh
. "$XECM_ROOT/tests/demo/lib.sh"
say() { say_tagged "backup demo" "$@"; }
show() { python3 "$XECM_ROOT/tests/demo/show.py" "$@"; }
json() { python3 -c "import json,sys; v=json.load(sys.stdin); print(eval(sys.argv[1], {'v': v}))" "$1"; }

WORK=$(mktemp -d -t xecm-backup-demo.XXXXXX)
trap 'rm -rf "$WORK"' EXIT INT TERM

TICKET=$(curl -fsS -X POST "$API/v1/auth" -d username=admin -d password=admin | json 'v["ticket"]')
ecm() { curl -fsS -H "OTCSTicket: $TICKET" "$@"; }

# A document of our own in Acme's contracts folder (500102), so the demo
# does not depend on what earlier steps placed.
printf 'Framework agreement, version 1\n' >"$WORK/framework.txt"
DOC=$(ecm -X POST "$API/v2/nodes" \
    -F 'body={"type":144,"parent_id":500102,"name":"Framework agreement (backup demo).txt"}' \
    -F "file=@$WORK/framework.txt;type=text/plain" | json 'v["results"]["data"]["properties"]["id"]')

BACKUP=$(cat <<JSON
{"name": "workspaces", "roots": [3000], "sftp_secret": "$XECM_SFTP_SECRET_ID",
 "directory": "backups/workspaces", "retention": 7, "incremental": true,
 "include_metadata": true, "page_size": 100, "parallelism": 4}
JSON
)
run() { with_progress "backup-snapshot" run_once "$1"; }
run_once() { printf '%s' "$1" | "$BIN/backup-snapshot" --event - 2>"$WORK/last.log"; }
summary='"snapshot %s: %d documents, %d copied, %d already in %s, %d skipped, %d bytes" % (v["summary"]["snapshot_id"], v["summary"]["counts"]["documents"], v["summary"]["counts"]["copied"], v["summary"]["counts"]["referenced"], v["summary"]["base_snapshot"] or "an earlier snapshot", v["summary"]["counts"]["skipped"], v["summary"]["counts"]["bytes"])'

say "1. full snapshot of the business workspaces (Business Workspaces, node 3000)"
run "{\"backup\": $BACKUP}" >"$WORK/full.json"
FULL=$(json 'v["summary"]["snapshot_id"]' <"$WORK/full.json")
json "$summary" <"$WORK/full.json"
show_events

say "2. a new version of 'Framework agreement (backup demo).txt' in Content Server"
printf 'Framework agreement, version 2 (signed)\n' >"$WORK/framework.txt"
ecm -X POST "$API/v2/nodes/$DOC/versions" -F "file=@$WORK/framework.txt;type=text/plain" >/dev/null
echo "$(show node "$DOC" | head -1 | sed 's/^ *//') now has version 2"

say "3. incremental snapshot"
run "{\"backup\": $BACKUP}" >"$WORK/inc.json"
INC=$(json 'v["summary"]["snapshot_id"]' <"$WORK/inc.json")
json "$summary" <"$WORK/inc.json"
show_events
echo "on the SFTP server, the two snapshots:"
for d in "$XECM_SFTP_DATA_ROOT"/backups/workspaces/*/; do
    echo "  ${XECM_SFTP_REMOTE_ROOT:-/data}/backups/workspaces/$(basename "$d")/  ($(find "$d" -type f | wc -l) files)"
done

for id in "$FULL" "$INC"; do
    say "4. verify $id"
    run "{\"action\": \"verify\", \"backup\": $BACKUP, \"snapshot_id\": \"$id\"}" \
        | json '"%d files, %d bytes re-hashed (%s), %d problems" % (v["files_checked"], v["bytes_checked"], ("also in " + ", ".join(v["referenced_snapshots"])) if v["referenced_snapshots"] else "all in this snapshot", v["problems_total"])'
done

say "5. restore $INC into an empty folder (the DR drill)"
TARGET=$(ecm -X POST "$API/v2/nodes" --data-urlencode "body={\"type\":0,\"parent_id\":2000,\"name\":\"DR drill $INC\"}" \
    | json 'v["results"]["data"]["properties"]["id"]')
run "{\"action\": \"restore\", \"backup\": $BACKUP, \"snapshot_id\": \"$INC\", \"target_folder\": $TARGET}" \
    | json '"%d documents restored into Enterprise / DR drill '"$INC"' (node %d), %d bytes, every SHA-256 matched the manifest; %d problems" % (v["restored_total"], v["target_folder"], v["bytes"], v["problems_total"])'
show_events
echo "browse it at $XECM_ECM_URL/ui"
