#!/usr/bin/env bash
# Drops a realistic mixed partner delivery into the SFTP data root, for the
# route in events/ingest-demo.json (source_dir inbound/partners):
#   - two supplier invoices with vendor ids in the name (one for a supplier
#     workspace that exists, one for a new supplier: created from its template)
#   - a contract redline that becomes version 2 of the draft already in the
#     contract workspace (the draft is put there first, as the outbound
#     contract exchange would have; needs XECM_ECM_URL, skipped otherwise)
#   - two compliance reports described by a CSV index file
#   - a daily transaction file for the records workspace
#   - an unmatched file and a fake PDF (both end in failed/ with a reason)
# Usage: tests/demo/drop.sh DATA_ROOT   (the local filesystem path of the SFTP root)
set -euo pipefail

root=${1:?usage: drop.sh DATA_ROOT}
dir="$root/inbound/partners"
mkdir -p "$dir"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

pdf() { # pdf FILE TEXT: a small but well-formed one-page PDF
    local text=$2
    python3 - "$1" "$text" <<'PY'
import sys
path, text = sys.argv[1], sys.argv[2]
stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
out = bytearray(b"%PDF-1.7\n")
offsets = []
for i, o in enumerate(objs, 1):
    offsets.append(len(out))
    out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
xref = len(out)
out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
for off in offsets:
    out += b"%010d 00000 n \n" % off
out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
open(path, "wb").write(out)
PY
}

docx() { # docx FILE TEXT: a minimal Office Open XML document (a zip)
    python3 - "$1" "$2" <<'PY'
import sys, zipfile
path, text = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>')
    z.writestr("word/document.xml", f'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:body></w:document>')
PY
}

# The draft the counterparty redlined: version 1 in the contract workspace.
if [ -n "${XECM_ECM_URL:-}" ]; then
    docx "$stage/draft.docx" "Master Supply Agreement - draft sent to Acme"
    api="$XECM_ECM_URL/cs/cs/api"
    ticket=$(curl -fsS -X POST "$api/v1/auth" --data-urlencode username=admin --data-urlencode password=admin |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ticket"])')
    curl -fsS -o /dev/null -H "OTCSTicket: $ticket" "$api/v2/nodes" \
        -F 'body={"type":144,"parent_id":520101,"name":"Master Supply Agreement.docx"}' \
        -F "file=@$stage/draft.docx;type=application/vnd.openxmlformats-officedocument.wordprocessingml.document" &&
        echo "drop: draft 'Master Supply Agreement.docx' (version 1) is in Content Server at Master Supply Agreement Acme (4600000001) / Drafts"
else
    echo "drop: XECM_ECM_URL not set; the redline will fail (no draft to version)" >&2
fi

# Write under a temporary name, then rename: what a well-behaved partner does.
put() { cp "$1" "$dir/.$2.part" && mv "$dir/.$2.part" "$dir/$2"; }

pdf "$stage/a.pdf" "Invoice 004711 Acme Supplies GmbH EUR 1,250.00"
put "$stage/a.pdf" INV-004711_0000100001.pdf
pdf "$stage/b.pdf" "Invoice 004712 Initech Components EUR 980.00"
put "$stage/b.pdf" INV-004712_0000100003.pdf

docx "$stage/redline.docx" "Master Supply Agreement - Acme redline, clause 7.2 changed"
put "$stage/redline.docx" 4600000001_MSA_redline.docx

pdf "$stage/q1.pdf" "Audit report Q3 plant 1000: 2 minor findings"
put "$stage/q1.pdf" QR-2026-Q3-audit.pdf
pdf "$stage/q2.pdf" "Audit report Q4 plant 1000: no findings"
put "$stage/q2.pdf" QR-2026-Q4-audit.pdf
printf 'file;report_type;period;source_system;plant\nQR-2026-Q3-audit.pdf;audit;2026-Q3;QMS;1000\nQR-2026-Q4-audit.pdf;audit;2026-Q4;QMS;1000\n' >"$stage/index.csv"
put "$stage/index.csv" index-2026-11.csv

{
    echo "posting_date;document;amount;currency"
    for i in $(seq 1 200); do echo "2026-11-26;49000$i;$((i * 17)).00;EUR"; done
} >"$stage/tx.csv"
put "$stage/tx.csv" TX_1000_20261126.csv

echo "holiday schedule 2026" >"$stage/notes.txt"
put "$stage/notes.txt" notes-for-accounting.txt

# A "PDF" that is a Windows executable: refused by its magic bytes.
printf 'MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff' >"$stage/fake.pdf"
put "$stage/fake.pdf" INV-004713_0000100001.pdf

# The SFTP account must be able to claim (rename) what we wrote as root.
chown -R --reference="$root" "$root/inbound"

# As the SFTP client sees them (the SFTP root is $root on this machine).
remote=${XECM_SFTP_REMOTE_ROOT:-/data}/inbound/partners
echo "drop: $(find "$dir" -maxdepth 1 -type f | wc -l) files in $remote:"
find "$dir" -maxdepth 1 -type f -printf '%f %s\n' | sort | while read -r name size; do
    echo "  $remote/$name  ($size bytes)"
done
