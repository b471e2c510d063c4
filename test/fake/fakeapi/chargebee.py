"""The Chargebee API v2 fake (reference: stripe-chargebee.md part B; error
shapes from specs/chargebee-api-v1-spec.json components.schemas "400".."503").

Base URL .../chargebee/api/v2:
  GET  /customers/{id}     GET /customers (filters, limit, offset)
  POST /customers/{id}     meta_data (one JSON-string field, REPLACES the stored
                           object), cf_* custom fields (must be seeded), other
                           known params; emits customer_changed
  GET  /events             event_type/occurred_at/id/source/webhook_status
                           filters, sort_by, limit, offset; no customer filter
  GET  /events/{id}
Errors carry the documented fields (message, type, api_error_code, param)
plus the legacy ones (error_code, error_msg, error_param, http_status_code)
seen in real responses.
"""
import base64
import copy
import json
import re
import threading
from datetime import datetime, timezone
from urllib.parse import unquote

from .common import Provider, Response, created_from, now, now_int
from .forms import last, subkey, top_name
from .idempotency import IN_FLIGHT, MISMATCH, REPLAY, IdempotencyStore

# Update-customer params of API v2 (chargebee-node Customer.d.ts UpdateInputParam;
# from memory of the SDK, not from a spec file: there is no v2 spec here).
UPDATE_PARAMS = {
    "first_name", "last_name", "email", "preferred_currency_code", "phone", "company",
    "auto_collection", "net_term_days", "allow_direct_debit", "vat_number", "vat_number_prefix",
    "entity_identifier_scheme", "entity_identifier_standard", "registered_for_gst",
    "is_einvoice_enabled", "einvoicing_method", "taxability", "exemption_details",
    "customer_type", "client_profile_id", "taxjar_exemption_category",
    "business_customer_without_vat_number", "locale", "entity_code", "exempt_number",
    "offline_payment_method", "invoice_notes", "auto_close_invoices", "meta_data",
    "fraud_flag", "consolidated_invoicing", "tax_providers_fields",
}
STRING_UPDATE = {"first_name", "last_name", "email", "phone", "company", "locale", "invoice_notes",
                 "preferred_currency_code", "vat_number"}
CUSTOMER_FILTERS = {"id", "email", "first_name", "last_name", "company", "phone",
                    "created_at", "updated_at", "auto_collection", "taxability", "offline_payment_method",
                    "auto_close_invoices", "channel", "business_entity_id"}
EVENT_FILTERS = {"id", "webhook_status", "event_type", "source", "occurred_at"}
STRING_OPS = {"is", "is_not", "starts_with", "in", "not_in"}
TIME_OPS = {"after", "before", "on", "between"}
CF_MAX_LEN = 99   # single-line text custom field (chargebee.com/docs/1.0/custom_fields.html)


class CbError(Exception):
    def __init__(self, status, code, message, param=None, type_="invalid_request", storable=False):
        super().__init__(message)
        self.status, self.storable = status, storable
        self.body = error_body(status, code, message, param, type_)


def error_body(status, code, message, param=None, type_="invalid_request"):
    b = {"message": message, "type": type_, "api_error_code": code,
         "error_code": code, "error_msg": message, "http_status_code": status}
    if param:
        b["param"] = param
        b["error_param"] = param
    return b


def _ops_filter(value, op, arg):
    """Apply a string filter operator (arrays as JSON strings, B.0)."""
    if op in ("in", "not_in"):
        try:
            arr = json.loads(arg)
            assert isinstance(arr, list)
        except (ValueError, AssertionError):
            raise CbError(400, "invalid_request", "value for %s must be a JSON array" % op)
        hit = value in [str(a) for a in arr]
        return hit if op == "in" else not hit
    sval = "" if value is None else str(value)
    if op == "is":
        return sval == arg
    if op == "is_not":
        return sval != arg
    if op == "starts_with":
        return sval.startswith(arg)
    raise AssertionError(op)


def _time_filter(value, op, arg, param):
    try:
        if op == "between":
            a, b = json.loads(arg)
            return int(a) <= value <= int(b)
        t = int(arg)
    except (ValueError, TypeError):
        raise CbError(400, "invalid_request", "%s : invalid value %r" % (param, arg), param)
    if op == "after":
        return value > t
    if op == "before":
        return value < t
    day = lambda x: datetime.fromtimestamp(x, timezone.utc).date()   # noqa: E731
    return day(value) == day(t)


class Chargebee(Provider):
    name = "chargebee"
    prefix = "/chargebee/api/v2"

    def __init__(self, app):
        self.app = app
        self.lock = threading.RLock()
        self.reset()

    def reset(self):
        with self.lock:
            self.customers = {}
            self.events = []          # insertion order
            self.custom_fields = {}   # cf_name -> max length
            self.api_keys = None
            self.idem = IdempotencyStore()

    # -- seeding / state -----------------------------------------------------
    def seed(self, sec):
        if not isinstance(sec, dict):
            raise ValueError("chargebee seed must be an object")
        unknown = set(sec) - {"customers", "events", "custom_fields", "api_keys"}
        if unknown:
            raise ValueError("unknown chargebee seed keys: %s" % sorted(unknown))
        with self.lock:
            if "api_keys" in sec:
                self.api_keys = set(sec["api_keys"]) if sec["api_keys"] else None
            cfs = sec.get("custom_fields") or []
            if isinstance(cfs, dict):
                for k, v in cfs.items():
                    self.custom_fields[k] = int((v or {}).get("max_length", CF_MAX_LEN))
            else:
                for k in cfs:
                    self.custom_fields[k] = CF_MAX_LEN
            for c in sec.get("customers", []):
                t = created_from(c, c.get("created_at"))
                obj = {"id": None, "first_name": None, "last_name": None, "email": None,
                       "auto_collection": "on", "net_term_days": 0, "allow_direct_debit": False,
                       "created_at": t, "taxability": "taxable", "updated_at": t,
                       "pii_cleared": "active", "channel": "web", "resource_version": t * 1000,
                       "deleted": False, "object": "customer", "card_status": "no_card",
                       "promotional_credits": 0, "refundable_credits": 0, "excess_payments": 0,
                       "unbilled_charges": 0, "preferred_currency_code": "USD", "mrr": 0}
                obj.update({k: copy.deepcopy(v) for k, v in c.items() if k not in ("age_days",)})
                if not obj["id"]:
                    obj["id"] = "cb_fake%06d" % self.app.ids.next("cb_customer")
                self.customers[obj["id"]] = obj
            for e in sec.get("events", []):
                ev = {"id": None, "occurred_at": created_from(e, e.get("occurred_at")), "source": "api",
                      "object": "event", "api_version": "v2", "event_type": "payment_succeeded",
                      "webhook_status": "succeeded", "content": {}}
                ev.update({k: copy.deepcopy(v) for k, v in e.items() if k not in ("age_days",)})
                if not ev["id"]:
                    ev["id"] = "ev_fake%06d" % self.app.ids.next("cb_event")
                self.events.append(ev)
        return {k: len(sec.get(k, [])) for k in ("customers", "events", "custom_fields")}

    def state(self):
        with self.lock:
            return {"customers": copy.deepcopy(self.customers), "events": copy.deepcopy(self.events),
                    "custom_fields": sorted(self.custom_fields), "idempotency_keys": self.idem.keys()}

    def get_event(self, eid):
        with self.lock:
            for e in self.events:
                if e["id"] == eid:
                    return copy.deepcopy(e)
        return None

    # -- plumbing ----------------------------------------------------------
    def error_response(self, req, status, message):
        code, type_ = {400: ("invalid_request", "invalid_request"), 401: ("api_authentication_failed", "untyped"),
                       404: ("resource_not_found", "invalid_request"), 409: ("invalid_state_for_request", "invalid_request"),
                       422: ("unable_to_process_request", "invalid_request"), 429: ("api_request_limit_exceeded", "operation_failed"),
                       500: ("internal_error", "operation_failed"), 503: ("internal_temporary_error", "operation_failed"),
                       }.get(status, ("internal_error", "operation_failed"))
        return Response(status, error_body(status, code, message or "Sorry, something went wrong (fake %d)." % status, None, type_))

    def rate_limit_response(self, req):
        return Response(429, error_body(429, "api_request_limit_exceeded",
                                        "Sorry, access has been blocked temporarily due to request count exceeding acceptable limits. Please try after some time.",
                                        None, "operation_failed"))

    def decorate(self, req, resp):
        return resp

    def _auth_ok(self, req):
        h = req.header("authorization") or ""
        if h[:6].lower() != "basic ":
            return False
        try:
            user, sep, pw = base64.b64decode(h[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not user or not sep or pw != "":
            return False
        return self.api_keys is None or user in self.api_keys

    def handle(self, req):
        if not self._auth_ok(req):
            return Response(401, error_body(401, "api_authentication_failed",
                                            "Sorry, authentication failed. Invalid api key", None, "untyped"))
        if req.parse_error:
            return Response(400, error_body(400, "invalid_request", req.parse_error))
        m, p = req.method, req.path
        routes = [("GET", r"/customers", self.list_customers),
                  ("GET", r"/customers/([^/]+)", self.retrieve_customer),
                  ("POST", r"/customers/([^/]+)", self.update_customer),
                  ("GET", r"/events", self.list_events),
                  ("GET", r"/events/([^/]+)", self.retrieve_event)]
        for meth, rx, fn in routes:
            mm = re.fullmatch(rx, p)
            if mm and meth == m:
                args = [unquote(g) for g in mm.groups()]
                if m == "POST":
                    return self._post(req, fn, args)
                try:
                    with self.lock:
                        return fn(req, req.query_pairs, *args)
                except CbError as e:
                    return Response(e.status, e.body)
        return Response(404, error_body(404, "resource_not_found",
                                        "fake_api: no Chargebee v2 endpoint %s %s" % (m, p)))

    def _post(self, req, fn, args):
        if req.content_type != "application/x-www-form-urlencoded":
            return Response(400, error_body(400, "invalid_request",
                                            "Content-Type must be application/x-www-form-urlencoded"))
        pairs = list(req.form_pairs) + list(req.query_pairs)

        def run():
            f = req.handler_fault
            if f is not None:
                r = self.error_response(req, f.status, None) if f.body is None else Response(f.status, f.body)
                return r, True
            try:
                with self.lock:
                    return fn(req, pairs, *args), True
            except CbError as e:
                return Response(e.status, e.body), e.storable

        key = req.header("chargebee-idempotency-key")
        if key is None:
            return run()[0]
        if len(key) > 100 or not key.strip():
            return Response(400, error_body(400, "invalid_request",
                                            "chargebee-idempotency-key must be 1 to 100 characters"))
        outcome, resp = self.idem.run(key, (req.method, req.path, tuple(sorted(pairs))), run)
        if outcome == REPLAY:
            req.record["idempotent_replay"] = True
            return resp.header("chargebee-idempotency-replayed", "true")
        if outcome == MISMATCH:
            return Response(422, error_body(422, "unable_to_process_request",
                                            "The idempotency key was already used with a different request payload."))
        if outcome == IN_FLIGHT:
            return Response(429, error_body(429, "lock_timeout",
                                            "A request with the same idempotency key is in progress.", None, "operation_failed"))
        return resp

    # -- list helpers --------------------------------------------------------
    @staticmethod
    def _limit(pairs):
        v = last(pairs, "limit")
        if v is None:
            return 10
        try:
            n = int(v)
        except ValueError:
            n = 0
        if not 1 <= n <= 100:
            raise CbError(400, "invalid_request", "limit : must be between 1 and 100", "limit")
        return n

    @staticmethod
    def _page(items, pairs, key_fn):
        """Offset pagination with an opaque next_offset (shaped like
        Chargebee's '["<sort value>","<n>"]')."""
        limit = Chargebee._limit(pairs)
        start = 0
        off = last(pairs, "offset")
        if off is not None:
            try:
                sortval, idx = json.loads(off)
                start = int(idx)
                assert 0 <= start <= len(items)
            except (ValueError, TypeError, AssertionError):
                raise CbError(400, "invalid_request", "offset : invalid value", "offset")
        page = items[start:start + limit]
        body = {"list": page}
        if start + limit < len(items):
            body["next_offset"] = json.dumps([str(key_fn(items[start + limit - 1])), str(start + limit)],
                                             separators=(",", ":"))
        return body

    @staticmethod
    def _split(key):
        name = top_name(key)
        return name, subkey(key)

    # -- customers ---------------------------------------------------------
    def retrieve_customer(self, req, pairs, cid):
        c = self.customers.get(cid)
        if c is None or c.get("deleted"):
            raise CbError(404, "resource_not_found", "Sorry, we couldn't find that resource", storable=True)
        return Response(200, {"customer": copy.deepcopy(c)})

    def list_customers(self, req, pairs, *_):
        items = list(self.customers.values())
        include_deleted = last(pairs, "include_deleted") == "true"
        sort_desc, sort_field = True, "created_at"
        filters = []
        for k, v in pairs:
            name, op = self._split(k)
            if name in ("limit", "offset", "include_deleted"):
                continue
            if name == "sort_by" and op in ("asc", "desc") and v in ("created_at", "updated_at"):
                sort_desc, sort_field = op == "desc", v
                continue
            if name.startswith("cf_") and name not in self.custom_fields:
                raise CbError(400, "invalid_request", "%s : is not a valid custom field" % name, k)
            if not (name in CUSTOMER_FILTERS or name.startswith("cf_")) or op is None:
                raise CbError(400, "invalid_request", "%s : is not a valid parameter" % k, k)
            timey = name in ("created_at", "updated_at")
            if op not in (TIME_OPS if timey else STRING_OPS):
                raise CbError(400, "invalid_request", "%s : unsupported filter operator" % k, k)
            filters.append((name, op, v, timey, k))
        for name, op, v, timey, k in filters:
            items = [c for c in items if (_time_filter(int(c.get(name) or 0), op, v, k) if timey
                                          else _ops_filter(c.get(name), op, v))]
        if not include_deleted:
            items = [c for c in items if not c.get("deleted")]
        items.sort(key=lambda c: (c.get(sort_field) or 0), reverse=sort_desc)
        body = self._page([{"customer": copy.deepcopy(c)} for c in items], pairs,
                          lambda x: x["customer"].get(sort_field))
        return Response(200, body)

    def update_customer(self, req, pairs, cid):
        c = self.customers.get(cid)
        if c is None or c.get("deleted"):
            raise CbError(404, "resource_not_found", "Sorry, we couldn't find that resource", storable=True)
        new = copy.deepcopy(c)
        for k, v in pairs:
            name = top_name(k)
            if name.startswith("cf_"):
                if name not in self.custom_fields or k != name:
                    raise CbError(400, "invalid_request", "%s : is not a valid custom field" % k, k)
                if len(v) > self.custom_fields[name]:
                    raise CbError(400, "invalid_request", "%s : cannot be more than %d characters" % (name, self.custom_fields[name]), name)
                if v == "":
                    new.pop(name, None)
                else:
                    new[name] = v
                continue
            if name not in UPDATE_PARAMS:
                raise CbError(400, "invalid_request", "%s : is not a valid parameter" % k, k)
            if name == "meta_data":
                if k != name:
                    raise CbError(400, "invalid_request",
                                  "meta_data must be ONE parameter holding a JSON string, not %s" % k, k)
                if v == "":
                    new.pop("meta_data", None)
                    continue
                try:
                    md = json.loads(v)
                except ValueError:
                    raise CbError(400, "invalid_request", "meta_data : invalid JSON", "meta_data")
                if not isinstance(md, dict):
                    raise CbError(400, "invalid_request", "meta_data : must be a JSON object", "meta_data")
                new["meta_data"] = md          # replaces the stored object wholesale
            elif name in STRING_UPDATE and k == name:
                new[name] = v if v != "" else None
            # others: accepted, not modelled
        t = now_int()
        new["updated_at"] = t
        new["resource_version"] = max(int(c.get("resource_version") or 0) + 1, int(now() * 1000))
        self.customers[cid] = new
        # Every successful update records customer_changed (B.1; a no-op update too: guessed).
        self.events.append({"id": "ev_fake%06d" % self.app.ids.next("cb_event"), "occurred_at": t,
                            "source": "api", "object": "event", "api_version": "v2",
                            "event_type": "customer_changed", "webhook_status": "scheduled",
                            "content": {"customer": copy.deepcopy(new)}})
        return Response(200, {"customer": copy.deepcopy(new)})

    # -- events --------------------------------------------------------------
    def list_events(self, req, pairs, *_):
        items = list(self.events)
        asc = False
        filters = []
        for k, v in pairs:
            name, op = self._split(k)
            if name in ("limit", "offset"):
                continue
            if name == "sort_by":
                if op not in ("asc", "desc") or v != "occurred_at":
                    raise CbError(400, "invalid_request", "%s : only occurred_at can be sorted on" % k, k)
                asc = op == "asc"
                continue
            if name in ("start_time", "end_time") and op is None:      # deprecated aliases
                filters.append(("occurred_at", "after" if name == "start_time" else "before", v, k))
                continue
            if name not in EVENT_FILTERS or op is None:
                # There is no customer filter in the real API (B.2); reject it loudly.
                raise CbError(400, "invalid_request", "%s : is not a valid parameter" % k, k)
            if op not in (TIME_OPS if name == "occurred_at" else STRING_OPS):
                raise CbError(400, "invalid_request", "%s : unsupported filter operator" % k, k)
            filters.append((name, op, v, k))
        for name, op, v, k in filters:
            if name == "occurred_at":
                items = [e for e in items if _time_filter(int(e["occurred_at"]), op, v, k)]
            else:
                items = [e for e in items if _ops_filter(e.get(name), op, v)]
        order = {id(e): i for i, e in enumerate(self.events)}
        items.sort(key=lambda e: (e["occurred_at"], order[id(e)]), reverse=not asc)
        body = self._page([{"event": copy.deepcopy(e)} for e in items], pairs,
                          lambda x: x["event"]["occurred_at"] * 1000)
        return Response(200, body)

    def retrieve_event(self, req, pairs, eid):
        for e in self.events:
            if e["id"] == eid:
                return Response(200, {"event": copy.deepcopy(e)})
        raise CbError(404, "resource_not_found", "Sorry, we couldn't find that resource")
