#!/usr/bin/env python3
"""Drive the otcs-emulator with OpenText's own client, pyxecm 3.7.0.

Usage: pyxecm_conformance.py URL [BASE_PATH]
  URL        e.g. http://127.0.0.1:8080
  BASE_PATH  /cs/cs (default) or /otcs/cs.exe

Prints one line per check and a final "N passed, M failed"; exits non-zero
when any check fails. Needs the built-in seed (ids in ../README.md).
"""

import logging
import os
import sys
import tempfile
import time
import traceback
import urllib.parse

from pyxecm import OTCS

ENTERPRISE_VOLUME_TYPE = 141
ENTERPRISE_ID = 2000
DOC_CONTROL = 9001  # category "Document Control", attribute 2 = Status
SUPPLIER_TYPE = 100
SUPPLIER_WS = 5001  # SAP / LFA1 / 0000100001
SUPPLIER_TEMPLATE = 20001
SUPPLIER_CAT = 9007  # the Supplier type's category, 2 = Vendor Number
RM_CONTRACTS = 7001

results = []


def check(name):
    def wrap(fn):
        try:
            detail = fn()
            results.append(True)
            print(f"PASS {name}" + (f" ({detail})" if detail else ""))
        except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
            results.append(False)
            print(f"FAIL {name}: {e}")
            traceback.print_exc(limit=2, file=sys.stdout)
        return fn

    return wrap


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    url = urllib.parse.urlparse(sys.argv[1])
    base_path = sys.argv[2] if len(sys.argv) > 2 else "/cs/cs"
    logger = logging.getLogger("pyxecm-conformance")
    logging.basicConfig(level=logging.CRITICAL)
    otcs = OTCS(
        protocol=url.scheme or "http",
        hostname=url.hostname,
        port=url.port or 80,
        username="admin",
        password="admin",
        base_path=base_path,
        logger=logger,
    )
    state = {}
    stamp = str(int(time.time() * 1000))
    v1 = b"version one \x00\x01\x02" + os.urandom(70_000)
    v2 = b"version two " + os.urandom(130_000)

    @check("login")
    def _():
        cookie = otcs.authenticate(wait_for_ready=False)
        expect(cookie and cookie.get("otcsticket"), f"no ticket: {cookie}")

    @check("enterprise volume")
    def _():
        r = otcs.get_volume(ENTERPRISE_VOLUME_TYPE)
        vid = otcs.get_result_value(r, "id")
        expect(vid == ENTERPRISE_ID, f"enterprise volume id {vid}")
        return f"id {vid}"

    @check("create folder")
    def _():
        r = otcs.create_item(parent_id=ENTERPRISE_ID, item_type=0, item_name=f"conformance {stamp}")
        fid = otcs.get_result_value(r, "id")
        expect(isinstance(fid, int), f"no folder id in {r}")
        node = otcs.get_node(fid)
        expect(otcs.get_result_value(node, "parent_id") == ENTERPRISE_ID, f"wrong parent in {node}")
        state["folder"] = fid
        return f"id {fid}"

    @check("duplicate-name refusal")
    def _():
        # pyxecm returns None for a 500 unless asked to parse the error body.
        r = otcs.create_item(
            parent_id=ENTERPRISE_ID,
            item_type=0,
            item_name=f"conformance {stamp}",
            show_error=False,
            parse_error_response=True,
        )
        expect(r is not None and "already exists" in str(r.get("error", "")), f"not refused: {r}")
        expect(otcs.get_result_value(r, "id", show_error=False) is None, "duplicate got an id")

    @check("upload document")
    def _():
        r = otcs.upload_file_to_parent(
            parent_id=state["folder"],
            file_content=v1,
            file_name="contract.bin",
            mime_type="application/octet-stream",
            description="first",
        )
        did = otcs.get_result_value(r, "id")
        expect(isinstance(did, int), f"no document id in {r}")
        node = otcs.get_node(did)
        expect(otcs.get_result_value(node, "size") == len(v1), f"size mismatch in {node}")
        state["doc"] = did
        return f"id {did}"

    @check("add version")
    def _():
        r = otcs.add_document_version(
            node_id=state["doc"],
            file_content=v2,
            file_name="contract.bin",
            # pyxecm 3.7.0 guesses the type from file_url, which is None
            # for in-memory content, so name it.
            mime_type="application/octet-stream",
            description="second",
        )
        expect(r is not None and "error" not in r, f"add version failed: {r}")

    @check("list versions")
    def _():
        r = otcs.get_document_versions(state["doc"])
        nums = [x["data"]["versions"]["version_number"] for x in r["results"]]
        expect(nums == [1, 2], f"versions {nums}")
        latest = otcs.get_latest_document_version(state["doc"])
        expect(latest["data"]["version_number"] == 2, f"latest {latest}")
        return f"versions {nums}"

    @check("download each version byte-exact")
    def _():
        for num, want in ((1, v1), (2, v2)):
            got = otcs.get_document_content(state["doc"], version_number=str(num))
            expect(got == want, f"version {num}: {len(got or b'')} bytes, want {len(want)}")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "latest.bin")
            expect(otcs.download_document(state["doc"], path), "download_document failed")
            with open(path, "rb") as f:
                expect(f.read() == v2, "latest download differs")
            path1 = os.path.join(d, "v1.bin")
            expect(otcs.download_document(state["doc"], path1, version_number=1), "download v1 failed")
            with open(path1, "rb") as f:
                expect(f.read() == v1, "v1 download differs")

    @check("apply category")
    def _():
        ok = otcs.assign_category(state["doc"], DOC_CONTROL, attribute_values={f"{DOC_CONTROL}_2": "Draft"})
        expect(ok, "assign_category returned False")
        expect(DOC_CONTROL in otcs.get_node_category_ids(state["doc"]), "category not listed")
        value = otcs.get_category_value(state["doc"], DOC_CONTROL, 2)
        expect(value == "Draft", f"value {value!r}")

    @check("update category")
    def _():
        r = otcs.set_category_value(state["doc"], "In Review", DOC_CONTROL, 2)
        expect(r is not None and "error" not in r, f"update failed: {r}")
        value = otcs.get_category_value(state["doc"], DOC_CONTROL, 2)
        expect(value == "In Review", f"value {value!r}")
        bad = otcs.set_category_value(state["doc"], "Bogus", DOC_CONTROL, 2)
        expect(bad is None, "invalid value accepted")

    @check("find workspaces by type")
    def _():
        r = otcs.get_workspace_by_type_and_name(type_id=SUPPLIER_TYPE)
        ids = [x["data"]["properties"]["id"] for x in r["results"]]
        expect(SUPPLIER_WS in ids, f"supplier workspace missing from {ids}")
        r = otcs.get_workspace_by_type_and_name(type_name="Supplier", name="Acme Supplies")
        expect(otcs.get_result_value(r, "id") == SUPPLIER_WS, f"by type name + name: {r}")
        return f"{len(ids)} supplier workspaces"

    @check("find workspace by business object")
    def _():
        r = otcs.get_workspace_by_business_object("SAP", "LFA1", "0000100001")
        wid = otcs.get_result_value(r, "id")
        expect(wid == SUPPLIER_WS, f"got {wid}")
        missing = otcs.get_workspace_by_business_object("SAP", "LFA1", "does-not-exist")
        expect(missing is None, f"unknown business object found: {missing}")

    @check("workspace carries its type's category")
    def _():
        names = otcs.get_node_category_names(SUPPLIER_WS)
        expect(names and "Supplier" in names, f"categories on the workspace: {names}")
        cat_id, defs = otcs.get_node_category_definition(SUPPLIER_WS, "Supplier")
        expect(int(cat_id) == SUPPLIER_CAT, f"category id {cat_id}")
        want = {"Vendor Number": f"{SUPPLIER_CAT}_2", "Vendor Name": f"{SUPPLIER_CAT}_3", "Country": f"{SUPPLIER_CAT}_4"}
        got = {name: d["id"] for name, d in defs.items()}
        expect(got == want, f"attribute definitions {defs}")
        expect(all(d["type"] == "String" for d in defs.values()), f"attribute types {defs}")
        value = otcs.get_category_value_by_name(SUPPLIER_WS, "Supplier", "Vendor Number")
        expect(value == "0000100001", f"Vendor Number {value!r}")
        return f"{len(defs)} attributes"

    @check("workspace from template gets the type's category")
    def _():
        r = otcs.create_workspace(
            workspace_template_id=SUPPLIER_TEMPLATE,
            workspace_name=f"Conformance Supplier {stamp}",
            workspace_description="created by the conformance check",
            workspace_type=SUPPLIER_TYPE,
            category_data={str(SUPPLIER_CAT): {f"{SUPPLIER_CAT}_2": stamp}},
            external_system_id="SAP",
            bo_type="LFA1",
            bo_id=f"C{stamp}",
        )
        wid = otcs.get_result_value(r, "id")
        expect(isinstance(wid, int), f"no workspace id in {r}")
        expect(SUPPLIER_CAT in otcs.get_node_category_ids(wid), "type category not on the new workspace")
        value = otcs.get_category_value_by_name(wid, "Supplier", "Vendor Number")
        expect(value == stamp, f"Vendor Number {value!r}, want {stamp}")
        empty = otcs.get_category_value_by_name(wid, "Supplier", "Country")
        expect(empty in (None, ""), f"Country {empty!r}, want empty")
        return f"id {wid}"

    @check("RM classify")
    def _():
        r = otcs.assign_rm_classification(state["doc"], RM_CONTRACTS)
        expect(r is not None and "error" not in r, f"classify failed: {r}")
        listed = otcs.do_request(
            url=otcs.config()["nodesUrl"] + f"/{state['doc']}/rmclassifications",
            method="GET",
            headers=otcs.request_form_header(),
        )
        ids = [x["rmclassification_id"] for x in listed["data"]]
        expect(RM_CONTRACTS in ids, f"classification not listed: {listed}")

    @check("list children with paging")
    def _():
        for i in range(4):
            otcs.create_item(parent_id=state["folder"], item_type=0, item_name=f"child {i}")
        seen = []
        for page in (1, 2, 3):
            r = otcs.get_subnodes(state["folder"], limit=2, page=page)
            paging = r["collection"]["paging"]
            expect(paging["total_count"] == 5, f"total {paging}")
            seen += [x["data"]["properties"]["name"] for x in r["results"]]
        expect(len(seen) == 5 and len(set(seen)) == 5, f"pages gave {seen}")
        folder = otcs.get_node(state["folder"])
        expect(otcs.get_result_value(folder, "size") == 5, f"container size {folder}")
        return "5 children over 3 pages"

    @check("node audit")
    def _():
        r = otcs.get_node_audit(state["doc"])
        names = [e["audit_name"] for e in r["results"]["data"]["audit"]]
        for want in ("Create", "Add Version", "Fetch", "Attribute Value Changed", "RM Classification Assigned"):
            expect(want in names, f"audit lacks {want!r}: {names}")
        expect(r["collection"]["paging"]["total_count"] == len(names), "audit total_count")
        return f"{len(names)} events"

    passed = sum(results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
