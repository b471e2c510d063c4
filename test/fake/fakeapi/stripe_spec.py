"""Check Stripe requests against the Stripe OpenAPI spec
(test/specs/stripe-spec3-extract.json, trimmed from Stripe's spec3.json).

The spec is indexed once at start-up.  For each request we find the path
template and operation, then check:
  - every top-level parameter name (before the first '[') is declared: query
    parameters for GET/DELETE, requestBody form properties for POST;
  - maxLength of string query parameters and path parameters;
  - `limit` is an integer in 1..100 (the range is in the spec descriptions);
  - POST bodies are application/x-www-form-urlencoded.
Every problem becomes a human-readable string in the request record's
"spec_violations"; the first one also decides the Stripe-like 4xx answer.

POST /v1/events/{id}/retry is not in the spec (stripe-chargebee.md A.4); it is
allow-listed with exactly the params the stripe-cli sends with an endpoint:
webhook_endpoint and account.
"""
import json
import re

from .forms import top_name

# Non-spec operations we accept anyway: template -> method -> form params.
ALLOW_LISTED = {
    "/v1/events/{id}/retry": {"post": {"webhook_endpoint", "account"}},
}


class Operation:
    """What we check for one operation.  Only names and maxLengths are kept
    (not the spec's schema subtrees), so the parsed spec can be freed."""

    def __init__(self, template, method, op, allow_listed=False):
        self.template = template
        self.method = method
        self.allow_listed = allow_listed
        self.query = {}         # name -> {"maxLength": n} or {}
        self.path_params = {}
        self.form = {}
        if op is None:
            return
        for p in op.get("parameters", []):
            where = {"query": self.query, "path": self.path_params}.get(p.get("in"))
            if where is not None:
                where[p["name"]] = _slim(p.get("schema", {}))
        content = (op.get("requestBody") or {}).get("content", {})
        form = content.get("application/x-www-form-urlencoded", {}).get("schema", {})
        self.form = {name: _slim(sch) for name, sch in form.get("properties", {}).items()}


def _slim(schema):
    return {"maxLength": schema["maxLength"]} if "maxLength" in schema else {}


class Match:
    def __init__(self):
        self.template = None
        self.op = None
        self.path_params = {}
        self.violations = []
        self.error = None      # (status, stripe error dict) to answer with


class StripeSpec:
    def __init__(self, spec_path):
        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
        self.version = spec.get("info", {}).get("version")
        self.templates = {}   # number of segments -> [(n_params, regex, template, names)]
        self.ops = {}         # (template, method) -> Operation
        for template, item in spec["paths"].items():
            self._add_template(template)
            for method, op in item.items():
                if method in ("get", "post", "delete"):
                    self.ops[(template, method)] = Operation(template, method, op)
        for template, methods in ALLOW_LISTED.items():
            self._add_template(template)
            for method, params in methods.items():
                o = Operation(template, method, None, allow_listed=True)
                o.form = {p: {"type": "string", "maxLength": 5000} for p in params}
                o.path_params = {"id": {"type": "string", "maxLength": 5000}}
                self.ops[(template, method)] = o
        for lst in self.templates.values():
            # literal segments win over {params}: /v1/customers/search must
            # not be taken for /v1/customers/{customer}
            lst.sort(key=lambda t: t[0])

    def _add_template(self, template):
        segs = template.strip("/").split("/")
        names = []
        parts = []
        for s in segs:
            m = re.fullmatch(r"\{([^}]+)\}", s)
            if m:
                names.append(m.group(1))
                parts.append("([^/]+)")
            else:
                parts.append(re.escape(s))
        rx = re.compile("^/" + "/".join(parts) + "$")
        lst = self.templates.setdefault(len(segs), [])
        if not any(t[2] == template for t in lst):
            lst.append((len(names), rx, template, names))

    def match(self, method, path, query_pairs, form_pairs, content_type):
        """Route and check a request; returns a Match."""
        from urllib.parse import unquote
        m = Match()
        method_l = method.lower()
        segs = path.strip("/").split("/")
        found_path = False
        for _, rx, template, names in self.templates.get(len(segs), []):
            mm = rx.match(path)
            if not mm:
                continue
            found_path = True
            op = self.ops.get((template, method_l))
            if op is None:
                continue
            m.template, m.op = template, op
            m.path_params = {n: unquote(v) for n, v in zip(names, mm.groups())}
            break
        if m.op is None:
            msg = "Unrecognized request URL (%s: %s). Please see https://stripe.com/docs or we can help at https://support.stripe.com/." % (method, path)
            m.violations.append("%s %s: %s" % (method, path, "no such operation in the spec (path exists, method does not)" if found_path else "no such path in the spec"))
            m.error = (404, {"type": "invalid_request_error", "message": msg})
            return m
        op = m.op
        where = "%s %s" % (method, op.template)
        for name, val in m.path_params.items():
            ml = op.path_params.get(name, {}).get("maxLength")
            if ml is not None and len(val) > ml:
                self._violate(m, "%s: path parameter %s longer than maxLength %d" % (where, name, ml),
                              400, name, "Invalid %s: must be at most %d characters" % (name, ml))
        if method_l == "post":
            if content_type != "application/x-www-form-urlencoded":
                self._violate(m, "%s: Content-Type is %r, the spec requires application/x-www-form-urlencoded" % (where, content_type or None),
                              400, None, "Invalid request: the Content-Type header must be application/x-www-form-urlencoded.")
            declared, kind = op.form, "form"
            params = list(form_pairs) + list(query_pairs)
        else:
            declared, kind = op.query, "query"
            params = list(query_pairs)
        for key, val in params:
            name = top_name(key)
            if name not in declared:
                self._violate(m, "%s: unknown %s parameter %r (sent as %r)" % (where, kind, name, key),
                              400, name, "Received unknown parameter: %s" % name)
                continue
            schema = declared[name]
            ml = schema.get("maxLength")
            if ml is not None and key == name and len(val) > ml:
                self._violate(m, "%s: parameter %s longer than maxLength %d" % (where, name, ml),
                              400, name, "Invalid %s: must be at most %d characters" % (name, ml))
            if name == "limit":
                try:
                    n = int(val)
                except ValueError:
                    self._violate(m, "%s: limit %r is not an integer" % (where, val), 400, "limit", "Invalid integer: %s" % val)
                    continue
                if n < 1 or n > 100:
                    self._violate(m, "%s: limit %d outside 1..100" % (where, n), 400, "limit",
                                  "This value must be %s." % ("greater than or equal to 1" if n < 1 else "less than or equal to 100"))
        return m

    @staticmethod
    def _violate(m, text, status, param, message):
        m.violations.append(text)
        if m.error is None:
            err = {"type": "invalid_request_error", "message": message}
            if param:
                err["param"] = param
            m.error = (status, err)
