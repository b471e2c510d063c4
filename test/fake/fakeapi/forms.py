"""Rack-style form and query-string parsing.

Stripe and Chargebee both take application/x-www-form-urlencoded bodies and
query strings with bracketed keys (metadata[cello_ucc]=..., created[gte]=...,
event_type[is]=...).  We keep the keys exactly as sent (after percent-
decoding) so tests can assert on them, and offer small helpers to look at the
bracketed structure.  Decoding is strict: the bytes after percent-decoding
must be valid UTF-8, otherwise the request is rejected (a real API would not
silently mangle them, and the worker must encode correctly).
"""
from urllib.parse import unquote_to_bytes


class FormError(ValueError):
    """The body or query string could not be decoded."""


def parse_pairs(raw):
    """Parse 'a=1&b[c]=2' into [('a','1'), ('b[c]','2')], preserving order.

    raw may be bytes or a str (a str is taken as latin-1, which is how
    http.server hands us the request line, so this recovers the raw bytes).
    '+' means space (form encoding; Rack treats query strings the same way).
    A piece without '=' gives an empty value.
    """
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = raw.encode("latin-1", errors="strict")
    pairs = []
    for piece in raw.split(b"&"):
        if not piece:
            continue
        key, _, value = piece.partition(b"=")
        try:
            k = unquote_to_bytes(key.replace(b"+", b" ")).decode("utf-8")
            v = unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormError("parameter is not valid UTF-8 after percent-decoding: %r" % piece[:80]) from exc
        pairs.append((k, v))
    return pairs


def to_multidict(pairs):
    """[('a','1'),('a','2')] -> {'a': ['1','2']} (keys as sent, in order)."""
    out = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def top_name(key):
    """The top-level parameter name: the part before the first '['."""
    i = key.find("[")
    return key if i < 0 else key[:i]


def subkey(key):
    """For 'metadata[a]' return 'a'; for 'metadata' return None.

    Everything between the first '[' and the final ']' is returned, so a
    malformed key such as 'metadata[a[b]]' yields 'a[b]' and the caller can
    reject the brackets instead of silently nesting.
    """
    i = key.find("[")
    if i < 0:
        return None
    if not key.endswith("]"):
        return key[i + 1:]
    return key[i + 1:-1]


def last(pairs, name, default=None):
    """Value of the last pair whose key equals name (Rack: last one wins)."""
    val = default
    for k, v in pairs:
        if k == name:
            val = v
    return val


def sub_params(pairs, name):
    """{'gte': '5', ...} for keys 'name[gte]'; '' key for a bare 'name'."""
    out = {}
    for k, v in pairs:
        if k == name:
            out[""] = v
        elif top_name(k) == name:
            out[subkey(k)] = v
    return out


def array_values(pairs, name):
    """Values of 'name[]=a&name[]=b' or 'name[0]=a&name[1]=b' (stripe-go style)."""
    return [v for k, v in pairs if top_name(k) == name and k != name]
