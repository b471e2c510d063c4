"""The Cello API fake (reference: cello-api.md §1, §2, §4) and Cello's
Chargebee webhook receiver (§6; stripe-chargebee.md B.3).

Cello API (base URL .../cello):
  POST /token                         key pair -> access+refresh token; refresh token -> access token
  POST /events                        v1 EventEnvelope, validated strictly (Bearer)
  GET  /referral-codes/{code}         ReferralCodeValidation; unknown -> 200 valid:false (Bearer)
  GET  /referral-codes/active-link/{productUserId}                            (Bearer)
  GET  /new-users/{productUserId}/reward                                      (Bearer)
Receiver (base URL .../cello-webhook):
  POST /chargebee                     a bare Chargebee event, Basic auth
"""
import base64
import copy
import re
import secrets
import threading
import time
from datetime import datetime
from urllib.parse import unquote

from .common import Provider, Response, now

TRIGGERS = ("new-signup", "demo-call-attended", "invoice-paid", "charge-refunded")
INTERVALS = ("one-time", "weekly", "bi-weekly", "monthly", "quarterly", "semi-annual",
             "yearly", "biennial", "triennial", "lifetime")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ENVELOPE_KEYS = {"eventName", "payload", "context"}
PAYLOAD_KEYS = {"ucc", "newUserId", "price", "currency"}


class Invalid(ValueError):
    pass


def _str(obj, key, where, required):
    v = obj.get(key)
    if v is None:
        if required:
            raise Invalid("%s.%s is required" % (where, key))
        return None
    if not isinstance(v, str):
        raise Invalid("%s.%s must be a string" % (where, key))
    if required and v == "":
        raise Invalid("%s.%s must not be empty" % (where, key))
    return v


def _obj(parent, key, where, required):
    v = parent.get(key)
    if v is None:
        if required:
            raise Invalid("%s.%s is required" % (where, key))
        return {}
    if not isinstance(v, dict):
        raise Invalid("%s.%s must be an object" % (where, key))
    return v


def validate_event(body):
    """Validate a v1 EventEnvelope (OpenAPI schema plus the per-trigger
    requirements of the tracking guides, cello-api.md §2).  Returns the
    trigger; raises Invalid naming the offending field."""
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object")
    extra = set(body) - ENVELOPE_KEYS
    if extra:
        raise Invalid("property %s should not exist" % sorted(extra)[0])
    if body.get("eventName") != "ReferralUpdated":
        raise Invalid("eventName must be \"ReferralUpdated\"")
    payload = _obj(body, "payload", "body", True)
    context = _obj(body, "context", "body", True)
    _str(payload, "ucc", "payload", True)
    _str(payload, "newUserId", "payload", True)
    price = payload.get("price")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
        raise Invalid("payload.price must be a number")
    _str(payload, "currency", "payload", False)
    event = _obj(context, "event", "context", True)
    trigger = _str(event, "trigger", "context.event", True)
    if trigger not in TRIGGERS:
        raise Invalid("context.event.trigger must be one of %s" % ", ".join(TRIGGERS))
    ts = _str(event, "timestamp", "context.event", True)
    if not RFC3339.match(ts):
        raise Invalid("context.event.timestamp must be RFC 3339 with 'T' and an offset or Z, got %r" % ts)
    try:
        datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("context.event.timestamp is not a valid date-time: %r" % ts)
    new_user = _obj(context, "newUser", "context", False)
    for k in ("id", "email", "name", "organizationId"):
        _str(new_user, k, "context.newUser", False)
    if new_user.get("email") and not EMAIL.match(new_user["email"]):
        raise Invalid("context.newUser.email must be an email address")
    sub = _obj(context, "subscription", "context", False)
    for k in ("id", "invoiceId", "productKey"):
        _str(sub, k, "context.subscription", False)
    if "interval" in sub and sub["interval"] not in INTERVALS:
        raise Invalid("context.subscription.interval must be one of %s" % ", ".join(INTERVALS))
    if "seatsUsed" in sub and (isinstance(sub["seatsUsed"], bool) or not isinstance(sub["seatsUsed"], int)):
        raise Invalid("context.subscription.seatsUsed must be an integer")
    if trigger in ("invoice-paid", "charge-refunded"):
        if price is None:
            raise Invalid("payload.price is required for %s" % trigger)
        _str(payload, "currency", "payload", True)
        _str(new_user, "id", "context.newUser", True)
        _str(new_user, "email", "context.newUser", True)
        _str(sub, "invoiceId", "context.subscription", True)
        _str(sub, "interval", "context.subscription", True)
        _str(sub, "productKey", "context.subscription", True)
    elif trigger == "new-signup":
        _str(new_user, "id", "context.newUser", True)
    return trigger


class Cello(Provider):
    name = "cello"
    prefix = "/cello"

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.key_pair = None
            self.token_ttl, self.refresh_ttl = 18000, 432000   # cello-api.md §1 examples
            self.access = {}      # token -> expiry (unix)
            self.refresh = {}
            self.codes = {}
            self.rewards = {}
            self.events = []
            self.tokens_issued = 0

    def seed(self, sec):
        if not isinstance(sec, dict):
            raise ValueError("cello seed must be an object")
        unknown = set(sec) - {"referral_codes", "access_key_id", "secret_access_key", "token_ttl",
                              "refresh_ttl", "rewards"}
        if unknown:
            raise ValueError("unknown cello seed keys: %s" % sorted(unknown))
        with self.lock:
            if "access_key_id" in sec or "secret_access_key" in sec:
                self.key_pair = (sec.get("access_key_id"), sec.get("secret_access_key"))
            self.token_ttl = int(sec.get("token_ttl", self.token_ttl))
            self.refresh_ttl = int(sec.get("refresh_ttl", self.refresh_ttl))
            for code, v in (sec.get("referral_codes") or {}).items():
                self.codes[code] = {"code": code, "productUserId": v.get("productUserId", ""),
                                    "valid": bool(v.get("valid", True)), "campaignId": v.get("campaignId", "")}
            self.rewards.update(sec.get("rewards") or {})
        return {"referral_codes": len(sec.get("referral_codes") or {})}

    def expire(self, access, refresh):
        with self.lock:
            past = now() - 1
            if access:
                self.access = {t: past for t in self.access}
            if refresh:
                self.refresh = {t: past for t in self.refresh}
        return {"ok": True, "expired": {"access": access, "refresh": refresh}}

    def state(self):
        t = now()
        with self.lock:
            return {"events": copy.deepcopy(self.events),
                    "referral_codes": copy.deepcopy(self.codes),
                    "tokens": {"issued": self.tokens_issued,
                               "access_valid": sum(1 for e in self.access.values() if e > t),
                               "refresh_valid": sum(1 for e in self.refresh.values() if e > t)}}

    def decorate(self, req, resp):
        # every Cello response carries the AWS API Gateway request id (§8)
        resp.header("apigw-requestid", "fakeApigw%08d" % self.app.ids.next("apigw"))
        return resp

    def error_response(self, req, status, message):
        default = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                   504: "Endpoint request timed out", 401: "Unauthorized", 404: "Not Found"}
        return Response(status, {"message": message or default.get(status, "Error")})

    def rate_limit_response(self, req):
        # API Gateway throttling body (cello-api.md §8: edge throttling possible, undocumented)
        return Response(429, {"message": "Too Many Requests"})

    def _token_error(self, req, message="Invalid API Credentials"):
        # observed shape (api-evangelist probe, cello-api.md §1)
        return Response(401, {"statusCode": 401, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                              "path": "/api/token", "message": message})

    def _bearer_ok(self, req):
        h = req.header("authorization") or ""
        if h[:7].lower() != "bearer ":
            return False
        with self.lock:
            exp = self.access.get(h[7:].strip())
        return exp is not None and exp > now()

    def handle(self, req):
        m, p = req.method, req.path
        if (m, p) == ("POST", "/token"):
            return self.token(req)
        routes = [("POST", r"/events", self.post_event),
                  ("GET", r"/referral-codes/active-link/([^/]+)", self.active_link),
                  ("GET", r"/referral-codes/([^/]+)", self.referral_code),
                  ("GET", r"/new-users/([^/]+)/reward", self.reward)]
        for meth, rx, fn in routes:
            mm = re.fullmatch(rx, p)
            if mm and meth == m:
                if not self._bearer_ok(req):
                    return Response(401, {"message": "Unauthorized"})
                return fn(req, *[unquote(g) for g in mm.groups()])
        return Response(404, {"message": "Not Found"})

    def token(self, req):
        body = req.json
        if req.content_type != "application/json" or not isinstance(body, dict):
            return Response(400, {"message": "request body must be a JSON object (Content-Type: application/json)"})
        t = now()
        with self.lock:
            if "refreshToken" in body:
                exp = self.refresh.get(body.get("refreshToken"))
                if exp is None or exp <= t:
                    return self._token_error(req, "Invalid refresh token")
                tok = self._new_token("access")
                self.access[tok] = t + self.token_ttl
                return Response(201, {"accessToken": tok, "expiresIn": self.token_ttl})
            if not isinstance(body.get("accessKeyId"), str) or not isinstance(body.get("secretAccessKey"), str):
                return Response(400, {"message": "accessKeyId and secretAccessKey are required"})
            if self.key_pair is None or (body["accessKeyId"], body["secretAccessKey"]) != self.key_pair:
                return self._token_error(req)
            acc, ref = self._new_token("access"), self._new_token("refresh")
            self.access[acc] = t + self.token_ttl
            self.refresh[ref] = t + self.refresh_ttl
            return Response(201, {"accessToken": acc, "refreshToken": ref, "expiresIn": self.token_ttl,
                                  "refreshTokenExpiresIn": self.refresh_ttl})

    def _new_token(self, kind):
        self.tokens_issued += 1
        return "eyJmYWtlIjoi%s.%d.%s" % (kind, self.tokens_issued, secrets.token_urlsafe(24))

    def post_event(self, req):
        if req.content_type != "application/json" or req.json is None:
            return Response(400, {"message": "request body must be JSON (Content-Type: application/json)"})
        try:
            trigger = validate_event(req.json)
        except Invalid as e:
            return Response(400, {"message": str(e)})
        body = req.json
        ctx = body["context"]
        with self.lock:
            self.events.append({
                "seq": len(self.events) + 1, "received_at": now(), "trigger": trigger,
                "ucc": body["payload"]["ucc"], "newUserId": body["payload"]["newUserId"],
                "invoiceId": (ctx.get("subscription") or {}).get("invoiceId"),
                "body": copy.deepcopy(body)})
        return Response(200, {"success": True})

    def referral_code(self, req, code):
        with self.lock:
            v = self.codes.get(code)
        return Response(200, dict(v) if v else {"code": code, "productUserId": "", "valid": False, "campaignId": ""})

    def active_link(self, req, user):
        with self.lock:
            for c in self.codes.values():
                if c["productUserId"] == user and c["valid"]:
                    return Response(200, {"activeUcc": c["code"], "link": "https://fake.cello.so/" + c["code"]})
        return Response(404, {"message": "Not Found"})

    def reward(self, req, user):
        with self.lock:
            if user in self.rewards:
                return Response(200, copy.deepcopy(self.rewards[user]))
            signup = next((e for e in self.events if e["trigger"] == "new-signup" and e["newUserId"] == user), None)
        if signup is None:
            return Response(200, {"eligible": False, "reward": None})
        code = self.codes.get(signup["ucc"], {})
        return Response(200, {"eligible": False, "reward": None, "signupId": "signup_fake%d" % signup["seq"],
                              "signupAt": signup["body"]["context"]["event"]["timestamp"],
                              "referralUcc": signup["ucc"], "campaignId": code.get("campaignId", "")})


class CelloWebhook(Provider):
    """Cello's Chargebee webhook endpoint: Chargebee (or the worker, which
    must mimic it) POSTs the bare event JSON with Basic auth."""
    name = "cello-webhook"
    prefix = "/cello-webhook"

    def __init__(self, app):
        self.app = app
        self.reset()

    def reset(self):
        self.credentials = None

    def seed(self, sec):
        if not isinstance(sec, dict) or set(sec) - {"username", "password"}:
            raise ValueError("chargebee_webhook seed takes username and password")
        self.credentials = (sec.get("username", ""), sec.get("password", ""))
        return {"credentials": True}

    def state(self):
        return {"deliveries": [d for d in self.app.list_deliveries() if d["provider"] == "chargebee"]}

    def handle(self, req):
        if (req.method, req.path) != ("POST", "/chargebee"):
            return Response(404, {"message": "Not Found"})
        h = req.header("authorization") or ""
        ok = False
        if h[:6].lower() == "basic " and self.credentials is not None:
            try:
                user, _, pw = base64.b64decode(h[6:].strip(), validate=True).decode("utf-8").partition(":")
                ok = (user, pw) == self.credentials
            except (ValueError, UnicodeDecodeError):
                ok = False
        if not ok:
            return Response(401, {"message": "Unauthorized"}, headers=[("WWW-Authenticate", 'Basic realm="cello"')])
        if req.content_type != "application/json":
            return Response(400, {"message": "Content-Type must be application/json"})
        ev = req.json
        if not isinstance(ev, dict):
            return Response(400, {"message": "body must be a JSON object"})
        if "event" in ev and "id" not in ev:
            return Response(400, {"message": "body must be the bare event object, not wrapped in {\"event\": ...}"})
        if not isinstance(ev.get("id"), str) or not isinstance(ev.get("event_type"), str):
            return Response(400, {"message": "event must have string id and event_type"})
        stored = self.app.chargebee.get_event(ev["id"])
        self.app.add_delivery({"provider": "chargebee", "event_id": ev["id"], "event_type": ev["event_type"],
                               "at": now(), "body": ev,
                               "matches_stored_event": None if stored is None else stored == ev})
        return Response(200, {"ok": True})
