#!/usr/bin/env python3
"""Make the trimmed Stripe spec and fixtures the local fake checks against.

The fake (test/fake/fakeapi/stripe_spec.py) needs, of Stripe's OpenAPI
spec, only each operation's path, method, parameter names and places, and
the maxLength of string parameters; of the fixtures, the sample customer,
invoice, event and webhook endpoint.  This keeps exactly that, in the
upstream files' own shapes, so the fake reads either the extract or the
whole upstream file.  Regenerate (see README.md here for the upstream
files' provenance):

    python3 test/specs/extract.py UPSTREAM/openapi/spec3.json \\
        UPSTREAM/openapi/fixtures3.json test/specs
"""
import json
import os
import sys

METHODS = ("get", "post", "delete")
FIXTURES = ("customer", "invoice", "event", "webhook_endpoint")


def slim_schema(schema):
    return {"maxLength": schema["maxLength"]} if "maxLength" in schema else {}


def slim_operation(op):
    out = {}
    params = [{"name": p["name"], "in": p["in"], "schema": slim_schema(p.get("schema", {}))}
              for p in op.get("parameters", []) if p.get("in") in ("query", "path")]
    if params:
        out["parameters"] = params
    form = (op.get("requestBody") or {}).get("content", {}) \
        .get("application/x-www-form-urlencoded", {}).get("schema", {})
    if "properties" in form:
        out["requestBody"] = {"content": {"application/x-www-form-urlencoded": {"schema": {
            "properties": {name: slim_schema(s) for name, s in form["properties"].items()}}}}}
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: extract.py SPEC3.json FIXTURES3.json OUTDIR")
    spec_path, fixtures_path, outdir = sys.argv[1:]
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    paths = {}
    for template, item in sorted(spec["paths"].items()):
        ops = {m: slim_operation(op) for m, op in item.items() if m in METHODS}
        if ops:
            paths[template] = ops
    extract = {"openapi": spec.get("openapi"),
               "info": {"title": spec["info"].get("title"), "version": spec["info"].get("version")},
               "paths": paths}
    with open(os.path.join(outdir, "stripe-spec3-extract.json"), "w", encoding="utf-8") as f:
        json.dump(extract, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(fixtures_path, encoding="utf-8") as f:
        resources = json.load(f)["resources"]
    with open(os.path.join(outdir, "stripe-fixtures3-extract.json"), "w", encoding="utf-8") as f:
        json.dump({"resources": {k: resources[k] for k in FIXTURES}}, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
