"""The Stripe fake (reference: stripe-chargebee.md part A; the Stripe spec).

Stateful: customers, invoices, events and webhook endpoints live in memory,
seeded over the sample objects of stripe-fixtures3.json so they have the real
shape.  Implemented operations:

  GET    /v1/customers/{customer}      GET /v1/customers   GET /v1/customers/search
  POST   /v1/customers/{customer}      DELETE /v1/customers/{customer}
  GET    /v1/events                    GET /v1/events/{id}
  POST   /v1/events/{id}/retry         (not in the spec; allow-listed)
  GET    /v1/invoices                  GET /v1/invoices/{invoice}
  GET    /v1/webhook_endpoints         GET /v1/webhook_endpoints/{webhook_endpoint}

Every request is first checked against the spec (stripe_spec.py); other spec
operations answer 501 so a test notices the worker calling something new.
Order of checks, like stripe-mock / Stripe: auth, route, content type and
parameters, idempotency, endpoint.
"""
import base64
import copy
import json
import re
import threading
import zlib

from . import stripe_search
from .common import DAY, Provider, Response, created_from, now, now_int
from .forms import array_values, last, sub_params, subkey, top_name
from .idempotency import FRESH, IN_FLIGHT, MISMATCH, REPLAY, IdempotencyStore
from .stripe_spec import StripeSpec

RETENTION = 30 * DAY          # events list / resend window (Stripe spec GetEvents; CLI docs)
META_MAX_KEYS, META_KEY_LEN, META_VALUE_LEN = 50, 40, 500   # docs.stripe.com/metadata
INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")


class StripeError(Exception):
    """An error answer.  storable: whether the idempotency layer keeps it
    (Stripe keeps results once the endpoint ran; validation errors happen
    before that and are not kept)."""

    def __init__(self, status, message, type_="invalid_request_error", param=None, code=None, storable=False):
        super().__init__(message)
        self.status = status
        self.err = {"type": type_, "message": message}
        if code:
            self.err["code"] = code
            self.err["doc_url"] = "https://stripe.com/docs/error-codes/" + code.replace("_", "-")
        if param:
            self.err["param"] = param
        self.storable = storable


def missing(kind, oid, param="id"):
    return StripeError(404, "No such %s: '%s'" % (kind, oid), param=param, code="resource_missing", storable=True)


class Stripe(Provider):
    name = "stripe"
    prefix = "/stripe"

    def __init__(self, app, spec_path, fixtures_path):
        self.app = app
        self.spec = StripeSpec(spec_path)
        with open(fixtures_path, encoding="utf-8") as f:
            res = json.load(f)["resources"]
        self.templates = {k: res[k] for k in ("customer", "invoice", "event", "webhook_endpoint")}
        self.lock = threading.RLock()
        self.routes = {
            ("get", "/v1/customers/{customer}"): self.get_customer,
            ("post", "/v1/customers/{customer}"): self.update_customer,
            ("delete", "/v1/customers/{customer}"): self.delete_customer,
            ("get", "/v1/customers"): self.list_customers,
            ("get", "/v1/customers/search"): self.search_customers,
            ("get", "/v1/events"): self.list_events,
            ("get", "/v1/events/{id}"): self.get_event,
            ("post", "/v1/events/{id}/retry"): self.retry_event,
            ("get", "/v1/invoices"): self.list_invoices,
            ("get", "/v1/invoices/{invoice}"): self.get_invoice,
            ("get", "/v1/webhook_endpoints"): self.list_endpoints,
            ("get", "/v1/webhook_endpoints/{webhook_endpoint}"): self.get_endpoint,
        }
        self.reset()

    # -- lifecycle ----------------------------------------------------------
    def reset(self):
        with self.lock:
            self.customers, self.invoices, self.events, self.endpoints = {}, {}, {}, {}
            self.order = {}       # object id -> insertion sequence (tie-break for sorting)
            self.nseq = 0
            self.api_keys = None  # None: any sk_/rk_ key is accepted
            self.settings = {"emit_noop_updates": False, "pending_webhooks": 0}
            self.idem = IdempotencyStore()

    def _new_id(self, prefix):
        return "%s_fake%016d" % (prefix, self.app.ids.next("stripe_" + prefix))

    def _put(self, table, obj):
        self.nseq += 1
        self.order[obj["id"]] = self.nseq
        table[obj["id"]] = obj

    # -- seeding --------------------------------------------------------------
    def seed(self, sec):
        if not isinstance(sec, dict):
            raise ValueError("stripe seed must be an object")
        unknown = set(sec) - {"customers", "invoices", "events", "webhook_endpoints", "api_keys", "settings"}
        if unknown:
            raise ValueError("unknown stripe seed keys: %s" % sorted(unknown))
        with self.lock:
            if "api_keys" in sec:
                self.api_keys = set(sec["api_keys"]) if sec["api_keys"] else None
            self.settings.update(sec.get("settings") or {})
            for c in sec.get("customers", []):
                self._seed_customer(c)
            for i in sec.get("invoices", []):
                self._seed_invoice(i)
            for w in sec.get("webhook_endpoints", []):
                self._seed_endpoint(w)
            for e in sec.get("events", []):
                self._seed_event(e)
        return {k: len(sec.get(k, [])) for k in ("customers", "invoices", "events", "webhook_endpoints")}

    def _from_template(self, kind, given, prefix):
        obj = copy.deepcopy(self.templates[kind])
        obj["id"] = given.get("id") or self._new_id(prefix)
        obj["created"] = created_from(given, given.get("created"))
        for k, v in given.items():
            if k not in ("age_days", "created", "id"):
                obj[k] = copy.deepcopy(v)
        return obj

    def _seed_customer(self, c):
        base = {"email": None, "name": None, "metadata": {}, "discount": None}
        base.update(c)
        obj = self._from_template("customer", base, "cus")
        self._put(self.customers, obj)

    def _seed_invoice(self, i):
        obj = self._from_template("invoice", i, "in")
        if obj.get("status") == "paid":
            obj.setdefault("status_transitions", {})
            obj["paid"] = True
            if "amount_paid" not in i:
                obj["amount_paid"] = obj.get("amount_due", 0)
            if "amount_remaining" not in i:
                obj["amount_remaining"] = 0
            if isinstance(obj.get("status_transitions"), dict):
                obj["status_transitions"]["paid_at"] = obj["created"]
        cust = self.customers.get(obj.get("customer"))
        if cust and "customer_email" not in i:
            obj["customer_email"] = cust.get("email")
        self._put(self.invoices, obj)

    def _seed_endpoint(self, w):
        base = {"enabled_events": ["*"], "status": "enabled", "url": "https://api.cello.so/fake/stripe-webhook"}
        base.update(w)
        self._put(self.endpoints, self._from_template("webhook_endpoint", base, "we"))

    def _seed_event(self, e):
        e = dict(e)
        invoice_id = e.pop("invoice", None)
        data = copy.deepcopy(e.pop("data", None))
        ev = self._from_template("event", e, "evt")
        ev.setdefault("type", "invoice.paid")
        ev["api_version"] = e.get("api_version", self.spec.version)
        ev["request"] = e.get("request", {"id": None, "idempotency_key": None})
        ev["pending_webhooks"] = e.get("pending_webhooks", 0)
        if invoice_id is not None:
            if invoice_id not in self.invoices:
                raise ValueError("event %s: invoice %s is not seeded" % (ev["id"], invoice_id))
            data = {"object": copy.deepcopy(self.invoices[invoice_id])}
        if data is None or not isinstance(data.get("object"), dict):
            raise ValueError("event %s needs data.object or invoice" % ev["id"])
        obj = data["object"]
        stored = self.invoices.get(obj.get("id")) or self.customers.get(obj.get("id"))
        if stored is not None:
            base = copy.deepcopy(stored)
        elif ev["type"].startswith("invoice."):
            base = copy.deepcopy(self.templates["invoice"])
        elif ev["type"].startswith("customer."):
            base = copy.deepcopy(self.templates["customer"])
        else:
            base = {}
        base.update(obj)
        data["object"] = base
        ev["data"] = data
        self._put(self.events, ev)

    def state(self):
        with self.lock:
            return {
                "customers": copy.deepcopy(self.customers),
                "invoices": copy.deepcopy(self.invoices),
                "events": sorted(copy.deepcopy(list(self.events.values())), key=self._sort_key),
                "webhook_endpoints": copy.deepcopy(self.endpoints),
                "idempotency_keys": self.idem.keys(),
            }

    # -- provider plumbing --------------------------------------------------
    def error_response(self, req, status, message):
        t = "api_error" if status >= 500 else "invalid_request_error"
        return Response(status, {"error": {"type": t, "message": message or (
            "An unknown error occurred" if status >= 500 else "Request failed with status %d" % status)}})

    def rate_limit_response(self, req):
        return Response(429, {"error": {
            "message": "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
            "type": "invalid_request_error", "code": "rate_limit"}})

    def decorate(self, req, resp):
        if not any(k.lower() == "request-id" for k, _ in resp.headers):
            resp.header("Request-Id", getattr(req, "request_id", None) or "req_%d" % self.app.ids.next("req"))
        key = req.header("idempotency-key")
        if key is not None:
            resp.header("Idempotency-Key", key)
        resp.header("Stripe-Version", req.header("stripe-version") or self.spec.version)
        return resp

    def _auth(self, req):
        h = req.header("authorization") or ""
        key = None
        if h[:7].lower() == "bearer ":
            key = h[7:].strip()
        elif h[:6].lower() == "basic ":
            try:
                key = base64.b64decode(h[6:].strip(), validate=True).decode("utf-8").split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                key = ""
        if not key:
            return StripeError(401, "You did not provide an API key. You need to provide your API key in the "
                               "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
        if not key.startswith(("sk_", "rk_")) or (self.api_keys is not None and key not in self.api_keys):
            masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "****"
            return StripeError(401, "Invalid API Key provided: %s" % masked)
        return None

    def handle(self, req):
        req.request_id = "req_%d" % self.app.ids.next("req")
        m = self.spec.match(req.method, req.path, req.query_pairs, req.form_pairs, req.content_type)
        req.record["spec_violations"] = m.violations
        req.record["spec_operation"] = ("%s %s" % (req.method, m.template)) if m.template else None
        err = self._auth(req)
        if err:
            return Response(err.status, {"error": err.err})
        if req.parse_error:
            return Response(400, {"error": {"type": "invalid_request_error", "message": "Invalid request: " + req.parse_error}})
        if m.error:
            status, e = m.error
            return Response(status, {"error": e})
        fn = self.routes.get((m.op.method, m.template))
        if fn is None:
            return Response(501, {"error": {"type": "api_error",
                                            "message": "fake_api does not implement %s %s" % (req.method, m.template)}})
        pairs = list(req.query_pairs) + (list(req.form_pairs) if req.method == "POST" else [])
        key = req.header("idempotency-key")
        if req.method != "POST" or key is None:
            return self._run(fn, req, m.path_params, pairs)[0]
        if len(key) > 255:
            return Response(400, {"error": {"type": "invalid_request_error",
                                            "message": "Idempotency-Key header must be at most 255 characters long."}})
        fingerprint = (req.method, req.path, tuple(sorted(pairs)))
        outcome, resp = self.idem.run(key, fingerprint, lambda: self._run(fn, req, m.path_params, pairs))
        if outcome == REPLAY:
            req.record["idempotent_replay"] = True
            return resp.header("Idempotent-Replayed", "true")
        if outcome == MISMATCH:
            return Response(400, {"error": {"type": "idempotency_error", "message":
                "Keys for idempotent requests can only be used with the same parameters they were first used with. "
                "Try using a key other than '%s' if you meant to execute a different request." % key}})
        if outcome == IN_FLIGHT:
            return Response(409, {"error": {"type": "idempotency_error", "code": "idempotency_key_in_use", "message":
                "There is currently another in-progress request using this Idempotent Key (that probably means you "
                "submitted twice, and the other request is still going through): %s. Please try again later." % key}})
        assert outcome == FRESH
        return resp

    def _run(self, fn, req, path_params, pairs):
        """Run an endpoint; returns (Response, storable-for-idempotency)."""
        f = req.handler_fault
        if f is not None:   # an endpoint-produced error (fault stage "handler"): stored like a real 500
            resp = self.error_response(req, f.status, None) if f.body is None else Response(f.status, f.body)
            for k, v in f.headers.items():
                resp.header(k, v)
            return resp, True
        try:
            with self.lock:
                return fn(req, path_params, pairs), True
        except StripeError as e:
            return Response(e.status, {"error": e.err}), e.storable

    # -- helpers ----------------------------------------------------------
    def _sort_key(self, o):
        return (o.get("created") or 0, self.order.get(o["id"], 0))

    @staticmethod
    def _limit(pairs):
        v = last(pairs, "limit")
        return 10 if v is None else int(v)   # range already checked against the spec

    def _filter_created(self, items, pairs, field="created"):
        cond = sub_params(pairs, field)
        ops = {"": lambda a, b: a == b, "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
               "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        for op, v in cond.items():
            if op not in ops:
                raise StripeError(400, "Received unknown parameter: %s[%s]" % (field, op), param="%s[%s]" % (field, op))
            try:
                b = int(v)
            except ValueError:
                raise StripeError(400, "Invalid integer: %s" % v, param=field if not op else "%s[%s]" % (field, op))
            items = [o for o in items if ops[op](int(o.get(field) or 0), b)]
        return items

    def _list(self, url, items, pairs, kind):
        """Newest first; cursor pagination with starting_after / ending_before."""
        items = sorted(items, key=self._sort_key, reverse=True)
        limit = self._limit(pairs)
        after, before = last(pairs, "starting_after"), last(pairs, "ending_before")
        ids = [o["id"] for o in items]
        if after is not None:
            if after not in ids:
                raise missing(kind, after, "starting_after")
            rest = items[ids.index(after) + 1:]
            page, has_more = rest[:limit], len(rest) > limit
        elif before is not None:
            if before not in ids:
                raise missing(kind, before, "ending_before")
            rest = items[:ids.index(before)]
            page, has_more = rest[-limit:], len(rest) > limit
        else:
            page, has_more = items[:limit], len(items) > limit
        return Response(200, {"object": "list", "url": url, "has_more": has_more, "data": copy.deepcopy(page)})

    # -- customers ---------------------------------------------------------
    def _customer(self, cid):
        c = self.customers.get(cid)
        if c is None or c.get("deleted"):
            raise missing("customer", cid)
        return c

    def get_customer(self, req, pp, pairs):
        c = self.customers.get(pp["customer"])
        if c is not None and c.get("deleted"):
            return Response(200, {"id": c["id"], "object": "customer", "deleted": True})
        return Response(200, copy.deepcopy(self._customer(pp["customer"])))

    def list_customers(self, req, pp, pairs):
        items = [c for c in self.customers.values() if not c.get("deleted")]
        email = last(pairs, "email")
        if email is not None:
            items = [c for c in items if c.get("email") == email]   # case-sensitive (spec GetCustomers)
        return self._list("/v1/customers", self._filter_created(items, pairs), pairs, "customer")

    def search_customers(self, req, pp, pairs):
        q = last(pairs, "query")
        if q is None:
            raise StripeError(400, "Missing required param: query.", param="query")
        try:
            parsed = stripe_search.parse(q)
        except stripe_search.SearchError as e:
            raise StripeError(400, str(e), param="query")
        limit = self._limit(pairs)
        offset = 0
        page = last(pairs, "page")
        if page is not None:
            offset = self._decode_page(page, q)
        items = sorted((c for c in self.customers.values()
                        if not c.get("deleted") and stripe_search.matches(c, parsed)),
                       key=self._sort_key, reverse=True)
        data = items[offset:offset + limit]
        has_more = offset + limit < len(items)
        body = {"object": "search_result", "url": "/v1/customers/search", "data": copy.deepcopy(data),
                "has_more": has_more, "next_page": self._encode_page(offset + limit, q) if has_more else None}
        if "total_count" in array_values(pairs, "expand"):
            body["total_count"] = len(items)
        return Response(200, body)

    @staticmethod
    def _encode_page(offset, q):
        raw = json.dumps([offset, zlib.crc32(q.encode("utf-8"))]).encode()
        return "page_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _decode_page(tok, q):
        try:
            assert tok.startswith("page_")
            b = tok[5:] + "=" * (-len(tok[5:]) % 4)
            offset, crc = json.loads(base64.urlsafe_b64decode(b))
            assert crc == zlib.crc32(q.encode("utf-8")) and isinstance(offset, int) and offset >= 0
            return offset
        except Exception:  # noqa: BLE001 - any bad token is the same client error
            raise StripeError(400, "Invalid page: the page token does not belong to this query.", param="page")

    def update_customer(self, req, pp, pairs):
        old = self._customer(pp["customer"])
        new = copy.deepcopy(old)
        md = dict(old.get("metadata") or {})
        for k, v in pairs:
            name = top_name(k)
            if name == "metadata":
                sk = subkey(k)
                if sk is None:
                    if v != "":
                        raise StripeError(400, "Invalid object", param="metadata")
                    md = {}                       # metadata= clears every key
                    continue
                if sk == "" or "[" in sk or "]" in sk:
                    raise StripeError(400, "Metadata keys may not be empty or contain '[' or ']' (got %r)." % sk, param=k)
                if len(sk) > META_KEY_LEN:
                    raise StripeError(400, "Metadata keys can have a maximum length of %d characters (%r)." % (META_KEY_LEN, sk), param=k)
                if len(v) > META_VALUE_LEN:
                    raise StripeError(400, "Metadata values can have a maximum length of %d characters (key %r)." % (META_VALUE_LEN, sk), param=k)
                if v == "":
                    md.pop(sk, None)              # metadata[k]= unsets one key
                else:
                    md[sk] = v
            elif k == name and name in ("email", "name", "description", "phone", "invoice_prefix"):
                new[name] = v if v != "" else None
            elif k == name and name == "balance":
                try:
                    new["balance"] = int(v)
                except ValueError:
                    raise StripeError(400, "Invalid integer: %s" % v, param="balance")
            # other spec-declared params are accepted and ignored: not modelled
        if len(md) > META_MAX_KEYS:
            raise StripeError(400, "Metadata can have a maximum of %d keys; this update would leave %d." % (META_MAX_KEYS, len(md)), param="metadata")
        new["metadata"] = md
        prev = {k: copy.deepcopy(old.get(k)) for k in new if new.get(k) != old.get(k)}
        self.customers[new["id"]] = new
        if prev or self.settings.get("emit_noop_updates"):
            self._emit("customer.updated", new, prev, req)
        return Response(200, copy.deepcopy(new))

    def delete_customer(self, req, pp, pairs):
        c = self._customer(pp["customer"])
        c["deleted"] = True
        self._emit("customer.deleted", c, None, req)
        return Response(200, {"id": c["id"], "object": "customer", "deleted": True})

    def _emit(self, type_, obj, prev, req):
        data = {"object": copy.deepcopy(obj)}
        if prev is not None:
            data["previous_attributes"] = prev
        ev = {"id": self._new_id("evt"), "object": "event", "api_version": self.spec.version,
              "created": now_int(), "data": data, "livemode": False,
              "pending_webhooks": int(self.settings.get("pending_webhooks") or 0),
              "request": {"id": req.request_id, "idempotency_key": req.header("idempotency-key")},
              "type": type_}
        self._put(self.events, ev)
        return ev

    # -- events ------------------------------------------------------------
    def list_events(self, req, pp, pairs):
        cutoff = now() - RETENTION
        items = [e for e in self.events.values() if e["created"] >= cutoff]
        typ, types = last(pairs, "type"), array_values(pairs, "types")
        if typ is not None and types:
            raise StripeError(400, "You may only specify one of these parameters: type, types.", param="type")
        if len(types) > 20:
            raise StripeError(400, "You may pass at most 20 types.", param="types")
        if typ is not None:
            rx = re.compile("^" + re.escape(typ).replace(r"\*", ".*") + "$")
            items = [e for e in items if rx.match(e["type"])]
        if types:
            items = [e for e in items if e["type"] in types]
        ds = last(pairs, "delivery_success")
        if ds is not None:
            if ds not in ("true", "false"):
                raise StripeError(400, "Invalid boolean: %s" % ds, param="delivery_success")
            items = [e for e in items if (e.get("pending_webhooks", 0) == 0) == (ds == "true")]
        return self._list("/v1/events", self._filter_created(items, pairs), pairs, "event")

    def get_event(self, req, pp, pairs):
        ev = self.events.get(pp["id"])
        if ev is None:
            raise missing("event", pp["id"])
        return Response(200, copy.deepcopy(ev))

    def retry_event(self, req, pp, pairs):
        ev = self.events.get(pp["id"])
        if ev is None:
            raise missing("event", pp["id"])
        we = last(pairs, "webhook_endpoint")
        if not we:
            raise StripeError(400, "Missing required param: webhook_endpoint.", param="webhook_endpoint")
        ep = self.endpoints.get(we)
        if ep is None:
            raise missing("webhook endpoint", we, "webhook_endpoint")
        if ep.get("status") != "enabled":
            raise StripeError(400, "The webhook endpoint %s is disabled." % we, param="webhook_endpoint")
        if ev["created"] < now() - RETENTION:
            raise StripeError(400, "Events older than 30 days cannot be resent.", storable=True)
        obj = ev["data"]["object"]
        enabled = ep.get("enabled_events") or []
        self.app.add_delivery({
            "provider": "stripe", "event_id": ev["id"], "webhook_endpoint": we, "at": now(),
            "event_type": ev["type"],
            "customer": obj.get("customer") if obj.get("object") != "customer" else obj.get("id"),
            "account": last(pairs, "account"),
            "endpoint_subscribed": "*" in enabled or ev["type"] in enabled,
        })
        return Response(200, copy.deepcopy(ev))

    # -- invoices / webhook endpoints ---------------------------------------
    def list_invoices(self, req, pp, pairs):
        items = list(self.invoices.values())
        status = last(pairs, "status")
        if status is not None and status not in INVOICE_STATUSES:
            raise StripeError(400, "Invalid status: must be one of %s" % ", ".join(INVOICE_STATUSES), param="status")
        for f in ("customer", "status", "subscription", "collection_method"):
            v = last(pairs, f)
            if v is not None:
                items = [i for i in items if i.get(f) == v]
        return self._list("/v1/invoices", self._filter_created(items, pairs), pairs, "invoice")

    def get_invoice(self, req, pp, pairs):
        inv = self.invoices.get(pp["invoice"])
        if inv is None:
            raise missing("invoice", pp["invoice"])
        return Response(200, copy.deepcopy(inv))

    def list_endpoints(self, req, pp, pairs):
        return self._list("/v1/webhook_endpoints", list(self.endpoints.values()), pairs, "webhook_endpoint")

    def get_endpoint(self, req, pp, pairs):
        ep = self.endpoints.get(pp["webhook_endpoint"])
        if ep is None:
            raise missing("webhook_endpoint", pp["webhook_endpoint"])
        return Response(200, copy.deepcopy(ep))
