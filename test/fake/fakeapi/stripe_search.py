"""A subset of Stripe's search query language for /v1/customers/search
(docs.stripe.com/search, summarised in stripe-chargebee.md A.2):

  clause   := ['-'] field op value
  field    := email | name | phone | created | metadata['key'] | metadata["key"]
  op       := ':'  (string fields: case-insensitive exact; metadata: exact)
            | '~'  (substring, value >= 3 chars; email/name/phone)
            | '>' '<' '>=' '<='  (created only)
  value    := 'quoted' | "quoted" (backslash escapes) | bare token (number, null)
  query    := clause { (' ' | AND | OR) clause }   -- AND and OR not mixed

`field:null` tests that the field is absent.  Anything else is a
SearchError, answered as a 400 by the Stripe fake.
"""
import re


class SearchError(ValueError):
    pass


STRING_FIELDS = {"email", "name", "phone"}
_field_rx = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_op_rx = re.compile(r">=|<=|:|~|>|<")
_bare_rx = re.compile(r"[^\s'\"()]+")


def _quoted(q, i):
    """Parse a quoted string starting at q[i]; returns (value, next index)."""
    quote = q[i]
    i += 1
    out = []
    while i < len(q):
        c = q[i]
        if c == "\\" and i + 1 < len(q):
            out.append(q[i + 1])
            i += 2
            continue
        if c == quote:
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise SearchError("unterminated string in search query")


def parse(q):
    """Returns (conjunction, [clause]) where clause is a dict."""
    clauses, conjs = [], set()
    i, n = 0, len(q)
    while True:
        while i < n and q[i].isspace():
            i += 1
        if i >= n:
            break
        if clauses:
            m = re.match(r"(AND|OR)(?=\s)", q[i:], re.I)
            if m:
                conjs.add(m.group(1).upper())
                i += len(m.group(1))
                while i < n and q[i].isspace():
                    i += 1
            else:
                conjs.add("AND")   # a space is an implicit AND
        neg = False
        if i < n and q[i] == "-":
            neg, i = True, i + 1
        m = _field_rx.match(q, i)
        if not m:
            raise SearchError("expected a field name at position %d of the search query" % i)
        field, i = m.group(0), m.end()
        key = None
        if field == "metadata":
            if i >= n or q[i] != "[" or i + 1 >= n or q[i + 1] not in "'\"":
                raise SearchError("metadata must be written metadata['key'] or metadata[\"key\"]")
            key, i = _quoted(q, i + 1)
            if i >= n or q[i] != "]":
                raise SearchError("expected ']' after the metadata key")
            i += 1
        elif field not in STRING_FIELDS and field != "created":
            raise SearchError("Field '%s' is an unsupported search field for resource customers (fake_api supports email, name, phone, created, metadata)." % field)
        m = _op_rx.match(q, i)
        if not m:
            raise SearchError("expected an operator after %s" % field)
        op, i = m.group(0), m.end()
        if i < n and q[i] in "'\"":
            value, i = _quoted(q, i)
            quoted = True
        else:
            m = _bare_rx.match(q, i)
            if not m:
                raise SearchError("expected a value after %s%s" % (field, op))
            value, i, quoted = m.group(0), m.end(), False
        if not quoted and value != "null" and field != "created":
            raise SearchError("string values must be quoted: %s%s%s" % (field, op, value))
        if op in (">", "<", ">=", "<=") and field != "created":
            raise SearchError("numeric comparison on non-numeric field %s" % field)
        if op == "~" and (field not in STRING_FIELDS or len(value) < 3):
            raise SearchError("~ needs a string field and a value of at least 3 characters")
        clauses.append({"neg": neg, "field": field, "key": key, "op": op,
                        "value": None if (value == "null" and not quoted) else value})
    if not clauses:
        raise SearchError("empty search query")
    if len(conjs) > 1:
        raise SearchError("AND and OR cannot be mixed in one search query")
    return (conjs.pop() if conjs else "AND"), clauses


def _clause_matches(obj, c):
    f, op, v = c["field"], c["op"], c["value"]
    if f == "metadata":
        actual = (obj.get("metadata") or {}).get(c["key"])
    else:
        actual = obj.get(f)
    if v is None:                       # field:null  -> absent
        return actual is None or actual == ""
    if actual is None:
        return False
    if f == "created":
        try:
            a, b = int(actual), int(v)
        except ValueError:
            return False
        return {":": a == b, ">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}.get(op, False)
    if f == "metadata":
        return actual == v if op == ":" else False
    if op == ":":
        return str(actual).lower() == v.lower()
    if op == "~":
        return v.lower() in str(actual).lower()
    return False


def matches(obj, parsed):
    conj, clauses = parsed
    results = (_clause_matches(obj, c) != c["neg"] for c in clauses)
    return all(results) if conj == "AND" else any(results)
