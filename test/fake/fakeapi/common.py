"""Shared request/response types and small helpers used by every provider."""
import json
import threading
import time


def now():
    """Wall-clock unix time (float).  One place so it could be faked later."""
    return time.time()


def now_int():
    return int(time.time())


DAY = 86400


def json_bytes(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Response:
    """What a handler returns; the server turns it into bytes on the wire."""

    def __init__(self, status, body=None, headers=None, raw=None, content_type="application/json"):
        self.status = status
        self.obj = body
        # raw bytes win over a JSON object (used by the malformed/huge faults)
        if raw is not None:
            self.body = raw
        elif body is None:
            self.body = b""
        else:
            self.body = json_bytes(body)
        self.headers = list(headers or [])
        if content_type and self.body:
            self.headers.append(("Content-Type", content_type + ("; charset=utf-8" if content_type == "application/json" else "")))

    def header(self, name, value):
        self.headers.append((name, str(value)))
        return self

    def copy(self):
        r = Response(self.status, raw=self.body, content_type=None)
        r.obj = self.obj
        r.headers = list(self.headers)
        return r


class Request:
    """A parsed incoming request, plus the record that describes it."""

    def __init__(self, method, provider, path, query, headers, body, record):
        self.method = method
        self.provider = provider
        self.path = path            # after the provider prefix, raw (not percent-decoded)
        self.query = query          # raw query string
        self.headers = headers      # dict, lower-case names
        self.body = body            # bytes
        self.record = record        # dict, shared with the recorder
        self.query_pairs = []
        self.form_pairs = []
        self.json = None
        self.handler_fault = None   # a fault to raise inside the idempotency layer

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    @property
    def content_type(self):
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")


class Counter:
    """Thread-safe counters that restart at reset, so ids are deterministic
    within a test (ids may appear in expected output)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters = {}

    def next(self, name):
        with self._lock:
            n = self._counters.get(name, 0) + 1
            self._counters[name] = n
            return n

    def reset(self):
        with self._lock:
            self._counters.clear()


def created_from(obj, default=None):
    """Apply the seed convenience 'age_days': N -> created = now - N days.
    Returns the unix timestamp to use (int)."""
    if "age_days" in obj:
        return int(now() - float(obj["age_days"]) * DAY)
    return default if default is not None else now_int()



class Provider:
    """Interface every faked API implements (see server.App)."""
    name = "?"
    prefix = "/?"

    def handle(self, req):
        raise NotImplementedError

    def error_response(self, req, status, message):
        """An error body in this provider's shape (used by status faults)."""
        return Response(status, {"message": message or "error %d" % status})

    def rate_limit_response(self, req):
        return Response(429, {"message": "Too Many Requests"})

    def decorate(self, req, resp):
        """Add per-provider headers to every response (incl. fault ones)."""
        return resp

    def reset(self):
        pass

    def seed(self, section):
        raise ValueError("%s takes no seed" % self.name)

    def state(self):
        return {}
