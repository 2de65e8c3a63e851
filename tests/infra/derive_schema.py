#!/usr/bin/env python3
"""Derives a compact Terraform schema of the AWS provider from the `.jsii`
assembly of the npm package @cdktf/provider-aws (which is generated from the
provider's own schema and names its provider version in every docs link).

    derive_schema.py PATH/TO/.jsii OUT.json

OUT.json: {"provider_version": "6.25.0",
           "resource": {type: BLOCK}, "data": {type: BLOCK}}
BLOCK:    {"args": {name: {"required": bool}},
           "blocks": {name: {"required": bool, "schema": BLOCK}},
           "attrs": [names that can be referenced]}

Only the Python standard library is used. The output is derived, large and
MPL-2.0 licensed like the provider: it lives in the cache, never in the tree.
"""
import json
import re
import sys

LINK = re.compile(
    r"registry\.terraform\.io/providers/hashicorp/aws/([0-9.]+)/docs/"
    r"(resources|data-sources)/([a-z0-9_]+)(?:#([a-z0-9_]+))?"
)


def snake(name):
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def docs_text(member):
    docs = member.get("docs", {})
    return " ".join(str(docs.get(k, "")) for k in ("summary", "remarks"))


def element_fqn(typ):
    """The struct fqn a property's type points at (a block), if any."""
    if "fqn" in typ:
        return None if typ["fqn"] == "cdktf.IResolvable" else typ["fqn"]
    if "collection" in typ:
        return element_fqn(typ["collection"]["elementtype"])
    if "union" in typ:
        for t in typ["union"]["types"]:
            fqn = element_fqn(t)
            if fqn:
                return fqn
    return None


def block_schema(types, fqn, seen):
    struct = types[fqn]
    out = {"args": {}, "blocks": {}, "attrs": []}
    for prop in struct.get("properties", []):
        match = LINK.search(docs_text(prop))
        name = match.group(4) if match and match.group(4) else snake(prop["name"])
        required = not prop.get("optional", False)
        target = element_fqn(prop["type"])
        if target and types.get(target, {}).get("datatype"):
            if target in seen:
                nested = {"args": {}, "blocks": {}, "attrs": [], "recursive": True}
            else:
                nested = block_schema(types, target, seen | {target})
            out["blocks"][name] = {"required": required, "schema": nested}
        else:
            out["args"][name] = {"required": required}
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: derive_schema.py PATH/TO/.jsii OUT.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        assembly = json.load(f)
    types = assembly["types"]
    result = {"resource": {}, "data": {}, "provider_version": None}
    for fqn, typ in types.items():
        if typ.get("kind") != "class" or typ.get("base") not in (
            "cdktf.TerraformResource",
            "cdktf.TerraformDataSource",
        ):
            continue
        match = LINK.search(docs_text(typ))
        if not match:
            continue
        version, kind, short = match.group(1), match.group(2), match.group(3)
        result["provider_version"] = result["provider_version"] or version
        params = typ.get("initializer", {}).get("parameters", [])
        config = next((p["type"]["fqn"] for p in params if p["name"] == "config"), None)
        if config is None:
            continue
        schema = block_schema(types, config, {config})
        attrs = set(schema["args"]) | set(schema["blocks"])
        for prop in typ.get("properties", []):
            name = prop["name"]
            if prop.get("static") or name.endswith("Input") or name == "fqn":
                continue
            attrs.add(snake(name))
        schema["attrs"] = sorted(attrs)
        section = "resource" if kind == "resources" else "data"
        result[section]["aws_" + short] = schema
    if not result["resource"]:
        sys.exit(f"{sys.argv[1]}: no resources found; is this @cdktf/provider-aws's .jsii?")
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f, sort_keys=True)
    print(
        f"AWS provider {result['provider_version']}: {len(result['resource'])} resources, "
        f"{len(result['data'])} data sources -> {sys.argv[2]}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
