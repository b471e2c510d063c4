"""Fault injection (POST /_control/fault).

A fault matches requests by provider, method and a regex on the path (after
the provider prefix) and applies to the next `count` matching requests.

Stages:
  "edge" (default)  the fault happens in front of the API, like a load
                    balancer, a rate limiter or the network: the request never
                    reaches the idempotency layer, so nothing is stored for
                    its idempotency key (Stripe: 429s and most errors come
                    from layers before the idempotency layer).
  "handler"         only for action "status": the error is produced by the
                    endpoint itself, inside the idempotency layer, so Stripe /
                    Chargebee store it and replay it for the same key (Stripe
                    replays 500s).
Option "apply": true (edge stage, actions other than stall) lets the request
be processed normally first (side effects, idempotency store) and then
replaces the response by the fault: "the API did it but the client never saw
the answer".
"""
import base64
import binascii
import re
import threading

ACTIONS = {"status", "rate_limit", "stall", "stall_body", "drop", "malformed", "huge", "shape"}
PROVIDERS = {"stripe", "chargebee", "cello", "cello-webhook", "any"}


class FaultError(ValueError):
    pass


class Fault:
    def __init__(self, fid, spec):
        self.id = fid
        self.spec = dict(spec)
        self.provider = spec.get("provider", "any")
        if self.provider not in PROVIDERS:
            raise FaultError("provider must be one of %s" % sorted(PROVIDERS))
        self.action = spec.get("action")
        if self.action not in ACTIONS:
            raise FaultError("action must be one of %s" % sorted(ACTIONS))
        self.method = (spec.get("method") or "").upper() or None
        try:
            self.path_re = re.compile(spec["path_regex"]) if spec.get("path_regex") else None
        except re.error as exc:
            raise FaultError("bad path_regex: %s" % exc)
        count = spec.get("count", 1)
        # count null or <= 0: applies until cleared
        self.remaining = None if count is None or int(count) <= 0 else int(count)
        self.status = int(spec.get("status", 500))
        self.body = spec.get("body")
        # raw bytes, which JSON cannot carry (invalid UTF-8, NUL): as base64 or as hex
        try:
            if "body_base64" in spec:
                self.raw = base64.b64decode(spec["body_base64"], validate=True)
            elif "body_hex" in spec:
                self.raw = bytes.fromhex(spec["body_hex"])
            else:
                self.raw = None
        except (binascii.Error, TypeError, ValueError) as exc:
            raise FaultError("bad body_base64 or body_hex: %s" % exc)
        self.headers = spec.get("headers") or {}
        self.seconds = float(spec.get("seconds", 5))
        self.retry_after = spec.get("retry_after")
        self.bytes = int(spec.get("bytes", 5 * 1024 * 1024))
        self.stage = spec.get("stage", "edge")
        if self.stage not in ("edge", "handler"):
            raise FaultError("stage must be edge or handler")
        if self.stage == "handler" and self.action != "status":
            raise FaultError("stage handler is only for action status")
        self.apply = bool(spec.get("apply", False))
        self.hits = 0

    def matches(self, provider, method, path):
        if self.provider != "any" and self.provider != provider:
            return False
        if self.method and self.method != method:
            return False
        if self.path_re and not self.path_re.search(path):
            return False
        return True

    def describe(self):
        d = dict(self.spec)
        d.update({"id": self.id, "remaining": self.remaining, "hits": self.hits})
        return d


class FaultTable:
    def __init__(self):
        self._lock = threading.Lock()
        self._faults = []
        self._next = 1

    def add(self, spec):
        with self._lock:
            f = Fault(self._next, spec)
            self._next += 1
            self._faults.append(f)
            return f

    def take(self, provider, method, path):
        """Return the first matching fault and count it down, or None."""
        with self._lock:
            for f in self._faults:
                if f.matches(provider, method, path):
                    f.hits += 1
                    if f.remaining is not None:
                        f.remaining -= 1
                        if f.remaining <= 0:
                            self._faults.remove(f)
                    return f
        return None

    def list(self):
        with self._lock:
            return [f.describe() for f in self._faults]

    def reset(self):
        with self._lock:
            self._faults = []
            self._next = 1
