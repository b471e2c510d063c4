"""HTTP front end of the fake: one port, providers selected by path prefix,
the control API under /_control/, fault injection and request recording.

Request flow for a provider request:
  read body -> record -> take matching fault -> (edge fault | provider.handle)
  -> provider.decorate (Request-Id etc.) -> write response.
"""
import json
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from .common import Counter, Request, Response, now
from .faults import FaultError, FaultTable
from .forms import FormError, parse_pairs, to_multidict
from .recording import Recorder


class App:
    """All state of the fake.  Providers keep their own objects; the App
    holds what is shared: recorder, faults, id counters, deliveries."""

    def __init__(self, stripe_spec, stripe_fixtures, log=None):
        from .cello import Cello, CelloWebhook
        from .chargebee import Chargebee
        from .stripe import Stripe

        self.log_file = log
        self.log_lock = threading.Lock()
        self.recorder = Recorder()
        self.faults = FaultTable()
        self.ids = Counter()
        self.stopping = threading.Event()
        self._deliveries_lock = threading.Lock()
        self.deliveries = []
        self.stripe = Stripe(self, stripe_spec, stripe_fixtures)
        self.chargebee = Chargebee(self)
        self.cello = Cello(self)
        self.cello_webhook = CelloWebhook(self)
        # Longest/most specific prefix first: "/cello-webhook" must be tried
        # before "/cello".
        self.providers = [self.stripe, self.chargebee, self.cello_webhook, self.cello]
        self.by_name = {p.name: p for p in self.providers}

    # -- shared helpers ---------------------------------------------------
    def log(self, msg):
        if not self.log_file:
            return
        with self.log_lock:
            self.log_file.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
            self.log_file.flush()

    def sleep(self, seconds):
        """Interruptible sleep: SIGTERM must not wait for stalled requests."""
        self.stopping.wait(seconds)

    def add_delivery(self, d):
        with self._deliveries_lock:
            d.setdefault("at", now())
            self.deliveries.append(d)

    def list_deliveries(self):
        with self._deliveries_lock:
            return [dict(d) for d in self.deliveries]

    def find_provider(self, path):
        for p in self.providers:
            if path == p.prefix or path.startswith(p.prefix + "/"):
                return p, path[len(p.prefix):] or "/"
        return None, path

    def reset(self):
        self.recorder.reset()
        self.faults.reset()
        self.ids.reset()
        with self._deliveries_lock:
            self.deliveries = []
        for p in self.providers:
            p.reset()

    def call(self, provider, req):
        """Run the provider; a bug in the fake becomes a 500 plus a record
        note, never a dead connection."""
        try:
            resp = provider.handle(req)
        except Exception:  # noqa: BLE001 - report any fake bug to the test
            tb = traceback.format_exc()
            self.log("FAKE BUG: " + tb)
            req.record["fake_error"] = tb
            resp = provider.error_response(req, 500, "fake_api internal error")
        provider.decorate(req, resp)
        return resp

    # -- control API ------------------------------------------------------
    def control(self, method, path, query, body):
        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            data = json.loads(body.decode("utf-8")) if body.strip() else {}
        except ValueError as exc:
            return Response(400, {"error": "control body is not JSON: %s" % exc})
        route = (method, path.rstrip("/"))
        try:
            if route == ("GET", "/_control/health"):
                return Response(200, {"ok": True})
            if route == ("POST", "/_control/reset"):
                self.reset()
                return Response(200, {"ok": True})
            if route == ("POST", "/_control/seed"):
                return Response(200, self.seed(data))
            if route == ("POST", "/_control/fault"):
                f = self.faults.add(data)
                return Response(200, {"ok": True, "fault": f.describe()})
            if route == ("GET", "/_control/faults"):
                return Response(200, self.faults.list())
            if route == ("POST", "/_control/faults/clear"):
                self.faults.reset()
                return Response(200, {"ok": True})
            if route == ("GET", "/_control/requests"):
                return Response(200, self.recorder.list(q.get("provider") or None, int(q.get("since") or 0)))
            if route == ("GET", "/_control/state"):
                prov = q.get("provider")
                if prov:
                    if prov not in self.by_name:
                        return Response(400, {"error": "unknown provider %r" % prov})
                    return Response(200, self.by_name[prov].state())
                st = {p.name: p.state() for p in self.providers}
                st["deliveries"] = self.list_deliveries()
                return Response(200, st)
            if route == ("GET", "/_control/deliveries"):
                return Response(200, self.list_deliveries())
            if route == ("POST", "/_control/cello/expire"):
                return Response(200, self.cello.expire(bool(data.get("access", True)), bool(data.get("refresh", False))))
        except (FaultError, ValueError, TypeError, KeyError) as exc:
            return Response(400, {"error": "%s: %s" % (type(exc).__name__, exc)})
        return Response(404, {"error": "unknown control endpoint %s %s" % (method, path)})

    def seed(self, data):
        if not isinstance(data, dict):
            raise ValueError("seed body must be a JSON object")
        sections = {"stripe": self.stripe, "chargebee": self.chargebee,
                    "cello": self.cello, "chargebee_webhook": self.cello_webhook}
        unknown = set(data) - set(sections)
        if unknown:
            raise ValueError("unknown seed sections: %s" % sorted(unknown))
        counts = {}
        for name, section in data.items():
            counts[name] = sections[name].seed(section)
        return {"ok": True, "seeded": counts}


# Canned bodies for faults that do not depend on the provider.
MALFORMED = b'{"id": "cus_truncated", "object": "customer", "metadata": {"cello_ucc": "Ab3d'
_huge_cache = {}


def huge_body(size):
    """A valid JSON object of exactly `size` bytes (cached: building 5 MB per
    request would be slow)."""
    if size not in _huge_cache:
        head, tail = b'{"object":"list","data":[],"padding":"', b'"}'
        pad = max(0, size - len(head) - len(tail))
        _huge_cache[size] = head + b"x" * pad + tail
    return _huge_cache[size]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive; we always send Content-Length
    # headers and body go out in separate writes: without TCP_NODELAY the
    # second waits ~40 ms for the client's delayed ACK
    disable_nagle_algorithm = True
    server_version = "fake_api/1.0"
    sys_version = ""

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):  # http.server's own access log: to --log only
        self.server.app.log("http: " + (fmt % args))

    def do_GET(self):
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    # -- wire helpers -----------------------------------------------------
    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the empty line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, resp, record=None):
        # recorded first: what the API did stands even if the client has
        # gone (killed mid-request) and the write below fails
        if record is not None:
            record["status"] = resp.status
        self.send_response(resp.status)
        for k, v in resp.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.body:
            self.wfile.write(resp.body)
        self.wfile.flush()

    # -- main dispatch ----------------------------------------------------
    def _dispatch(self):
        app = self.server.app
        method = self.command
        rawpath, _, query = self.path.partition("?")
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        try:
            if rawpath == "/_control" or rawpath.startswith("/_control/"):
                self._send(app.control(method, rawpath, query, body))
                return
            self._provider_request(app, method, rawpath, query, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _provider_request(self, app, method, rawpath, query, body):
        provider, sub = app.find_provider(rawpath)
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = v if k not in headers else headers[k] + ", " + v
        qerr = None
        try:
            qpairs = parse_pairs(query)
        except FormError as exc:
            qpairs, qerr = [], str(exc)
        rec = app.recorder.start(provider.name if provider else "unknown", method, sub, query,
                                 to_multidict(qpairs), headers, body)
        if provider is None:
            self._send(Response(404, {"error": "fake_api: no provider serves %s" % rawpath}), rec)
            return
        req = Request(method, provider, sub, query, headers, body, rec)
        req.query_pairs = qpairs
        req.parse_error = qerr
        ctype = req.content_type
        if ctype == "application/x-www-form-urlencoded":
            try:
                req.form_pairs = parse_pairs(body)
                rec["form"] = to_multidict(req.form_pairs)
            except FormError as exc:
                req.parse_error = str(exc)
        elif ctype == "application/json" or ctype.endswith("+json"):
            try:
                req.json = json.loads(body.decode("utf-8"))
                rec["json"] = req.json
            except ValueError:
                req.json = None
        fault = app.faults.take(provider.name, method, sub)
        if fault:
            rec["fault"] = fault.action
            rec["fault_id"] = fault.id
        app.log("%s %s %s%s fault=%s" % (provider.name, method, sub, "?" + query if query else "",
                                          fault.action if fault else "-"))
        if fault and fault.action == "stall":
            app.sleep(fault.seconds)
            fault = None
        if fault and fault.stage == "handler":
            req.handler_fault = fault
            fault = None
        if fault is None:
            self._send(app.call(provider, req), rec)
            return
        normal = app.call(provider, req) if fault.apply else None
        if normal is not None:
            rec["applied_status"] = normal.status
        if fault.action == "drop":
            rec["status"] = None
            self.close_connection = True
            return
        if fault.action == "stall_body":
            resp = normal or provider.decorate(req, Response(200, {"object": "fake_stall", "padding": "x" * 4096}))
            self.send_response(resp.status)
            for k, v in resp.headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body[: len(resp.body) // 2])
            self.wfile.flush()
            rec["status"] = resp.status
            app.sleep(fault.seconds)
            self.close_connection = True
            return
        resp = self._fault_response(provider, req, fault)
        provider.decorate(req, resp)
        self._send(resp, rec)

    def _fault_response(self, provider, req, f):
        if f.action == "status":
            if f.body_hex is not None:
                resp = Response(f.status, raw=bytes.fromhex(f.body_hex), content_type="application/json")
            elif f.body is None:
                resp = provider.error_response(req, f.status, None)
            elif isinstance(f.body, str):
                resp = Response(f.status, raw=f.body.encode("utf-8"), content_type="text/plain")
            else:
                resp = Response(f.status, f.body)
            for k, v in f.headers.items():
                resp.header(k, v)
            return resp
        if f.action == "rate_limit":
            resp = provider.rate_limit_response(req)
            if f.retry_after is not None:
                resp.header("Retry-After", f.retry_after)
            return resp
        if f.action == "malformed":
            return Response(200, raw=MALFORMED)
        if f.action == "huge":
            return Response(200, raw=huge_body(f.bytes))
        if f.action == "shape":
            return Response(200, f.body if f.body is not None else {"unexpected": True})
        raise AssertionError(f.action)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, app):
        self.app = app
        super().__init__(addr, Handler)

    def handle_error(self, request, client_address):
        # A client going away mid-response is normal in fault tests.
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return
        self.app.log("server error: " + traceback.format_exc())
