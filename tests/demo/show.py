#!/usr/bin/env python3
"""What the demo did, for a person: Content Server locations by workspace and
folder name, metadata by category and attribute name, SFTP paths as the SFTP
client sees them (under XECM_SFTP_REMOTE_ROOT, e.g. /data/...).

  show.py ls DIR                       files under DIR (relative to the SFTP root), with sizes
  show.py node ID [--category NAME]    where node ID is, and its categories by attribute name
  show.py ingest --route EVENT --report REPORT --dropped NAMES
                                       each dropped file: what the run did with it, where it is now
  show.py response < RESPONSE.json     an ecm-export response (delivery or package) in a line or two

Needs XECM_ECM_URL, XECM_SFTP_DATA_ROOT (and XECM_SFTP_REMOTE_ROOT, default /data)
from the local stack's env file. Only the standard library.
"""

import argparse
import csv
import json
import os
import sys
import urllib.parse
import urllib.request

WORKSPACE = 848  # node type of a business workspace
# Attributes only a machine reads (the transfer history's idempotency key,
# the invocation): left out of what a person sees.
MACHINE_ATTRIBUTES = {"Idempotency Key", "Invocation Id"}
ENTERPRISE = 2000


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"show.py: {name} is not set (source the local stack's env file)")
    return value


class Ecm:
    def __init__(self):
        self.api = env("XECM_ECM_URL").rstrip("/") + "/cs/cs/api"
        body = urllib.parse.urlencode({"username": "admin", "password": "admin"}).encode()
        self.ticket = self._call("/v1/auth", body, auth=False)["ticket"]
        self.nodes = {}

    def _call(self, path, data=None, auth=True):
        req = urllib.request.Request(self.api + path, data=data)
        if auth:
            req.add_header("OTCSTicket", self.ticket)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def node(self, node_id):
        if node_id not in self.nodes:
            v = self._call(f"/v2/nodes/{node_id}")
            self.nodes[node_id] = v["results"]["data"]["properties"]
        return self.nodes[node_id]

    def location(self, node_id):
        """'Workspace / Folder / ... / name', from the nearest business
        workspace down (or from under the Enterprise volume)."""
        names, n = [], self.node(node_id)
        while True:
            names.append(n["name"])
            if n["type"] == WORKSPACE:
                break
            parent = n.get("parent_id")
            if parent in (None, -1, ENTERPRISE) or n["id"] == ENTERPRISE:
                break
            n = self.node(parent)
        return " / ".join(reversed(names))

    def categories(self, node_id):
        """[(category name, [(attribute name, value)])], values by name."""
        out = []
        for item in self._call(f"/v2/nodes/{node_id}/categories")["results"]:
            meta = item["metadata"]["categories"]
            data = item["data"]["categories"]
            cat = next(k for k in meta if "_" not in k)
            attrs = []
            for key, value in data.items():
                if key not in meta or value in (None, "", []):
                    continue
                if meta[key].get("name") in MACHINE_ATTRIBUTES:
                    continue
                attrs.append((meta[key].get("name", key), value))
            out.append((meta[cat].get("name", cat), attrs))
        # The document's own metadata first, the transfer history after it.
        out.sort(key=lambda c: c[0] == "Transfer History")
        return out


def delivery(value):
    """An export-history delivery record, `["route/destination",version,"sha256","path"]`."""
    try:
        dest, version, sha, path = json.loads(value)
    except (TypeError, ValueError):
        return short(value)
    return f"{dest} v{version} → {remote_path(path)} (SHA-256 {str(sha)[:12]}…)"


def remote_path(path):
    """A path a function reported, as the SFTP client sees it: relative ones
    are relative to the SFTP secret's root."""
    path = str(path)
    return path if path.startswith("/") else remote(path)


def short(value):
    if isinstance(value, list):
        return "[" + ", ".join(short(v) for v in value) + "]"
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12] + "…"  # a SHA-256
    return text if len(text) <= 90 else text[:89] + "…"


def print_categories(ecm, node_id, only=None, indent="    "):
    shown = False
    for name, attrs in ecm.categories(node_id):
        if only and name != only:
            continue
        shown = True
        values = "; ".join(
            f"{a} = " + ("; ".join(delivery(d) for d in v) if a == "Deliveries" and isinstance(v, list) else short(v))
            for a, v in attrs
        ) or "(no values)"
        print(f"{indent}{name}: {values}")
    if not shown:
        print(f"{indent}(no {'category ' + only if only else 'categories'})")


def remote(rel):
    return env("XECM_SFTP_REMOTE_ROOT", "/data").rstrip("/") + "/" + rel.strip("/")


def cmd_ls(args):
    root = env("XECM_SFTP_DATA_ROOT")
    base = os.path.join(root, args.dir)
    if not os.path.isdir(base):
        print(f"  {remote(args.dir)}: (no such directory)")
        return
    for dirpath, dirs, files in os.walk(base):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            print(f"  {remote(rel)}  ({os.path.getsize(path)} bytes)")


def cmd_node(args):
    ecm = Ecm()
    print(f"  {ecm.location(args.id)}  (node {args.id})")
    print_categories(ecm, args.id, args.category)


def cmd_response(args):
    """An ecm-export response (webhook body or manual invocation), in a line or two."""
    v = json.load(sys.stdin)
    body = v
    if isinstance(v.get("body"), str):  # a Function URL response
        body = json.loads(v["body"])
    status = body.get("status", body.get("error", "?"))
    d = body.get("delivery")
    if d:
        print(f"  {status}: {d['route']}/{d['destination']} version {d['version']} at {remote_path(d['remote_path'])}")
        return
    p = body.get("package")
    if p:
        print(f"  {status}: {p['files']} files ({p['bytes']} bytes) to {p['destination']} at {remote_path(p['remote_path'])}")
        ecm = Ecm()
        for node, reason in p.get("skipped", []):
            print(f"  left out: {ecm.location(node)} (node {node}): {reason}")
        return
    print(f"  {status}: {json.dumps(body)}")


def find_moved(root, source_dir, name):
    """Where a source file is now: under the route's directory, not at its
    original place (archive/..., failed/...)."""
    base = os.path.join(root, source_dir)
    for dirpath, _, files in os.walk(base):
        if os.path.samefile(dirpath, base):
            continue
        if name in files:
            return os.path.relpath(os.path.join(dirpath, name), root)
    return None


def cmd_ingest(args):
    ecm = Ecm()
    root = env("XECM_SFTP_DATA_ROOT")
    route = json.load(open(args.route))["route"]
    source_dir = route["source_dir"].strip("/")
    report = json.load(open(args.report))
    dropped = [n for n in open(args.dropped).read().split("\n") if n]
    by_path = {f["source_path"].rsplit("/", 1)[-1]: f for f in report.get("files", [])}
    index = route.get("index") or {}
    counts = report.get("counts", {})
    print(f"ingest: route {report.get('route')}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f"; {len(dropped)} files dropped, each below")
    for name in dropped:
        f = by_path.get(name)
        if f is None:
            now = find_moved(root, source_dir, name)
            if index and fnmatch_simple(name, index.get("pattern", "")):
                described = index_files(os.path.join(root, now) if now else None, index)
                what = f"CSV index describing {', '.join(described) or 'no files'}"
            else:
                what = "not in the run's report"
            where = f"now at {remote(now)}" if now else "still at " + remote(f"{source_dir}/{name}")
            print(f"- {name}: {what}; {where}")
            continue
        outcome = f["outcome"]
        line = f"- {name}: {outcome}"
        if f.get("rule"):
            line += f" (rule {f['rule']})"
        print(line)
        if f.get("node_id"):
            version = f" version {f['version']}" if f.get("version") else ""
            print(f"    in Content Server: {ecm.location(f['node_id'])}{version}  (node {f['node_id']})")
            print_categories(ecm, f["node_id"], indent="      ")
        if f.get("reason"):
            print(f"    reason: {f['reason']}")
        now = find_moved(root, source_dir, name)
        if now:
            print(f"    source now at {remote(now)}")
        elif f.get("moved_to") == "deleted":
            print("    source deleted")
        elif f.get("moved_to"):
            print(f"    source moved to {f['moved_to']}")


def fnmatch_simple(name, pattern):
    import fnmatch
    return bool(pattern) and fnmatch.fnmatch(name, pattern)


def index_files(path, index):
    if not path or not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh, delimiter=index.get("delimiter", ","))
        return [r.get(index.get("file_column", "file"), "?") for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ls")
    s.add_argument("dir")
    s.set_defaults(func=cmd_ls)
    s = sub.add_parser("node")
    s.add_argument("id", type=int)
    s.add_argument("--category")
    s.set_defaults(func=cmd_node)
    s = sub.add_parser("ingest")
    s.add_argument("--route", required=True)
    s.add_argument("--report", required=True)
    s.add_argument("--dropped", required=True)
    s.set_defaults(func=cmd_ingest)
    s = sub.add_parser("response")
    s.set_defaults(func=cmd_response)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `show.py ... | head` ends quietly
    main()
