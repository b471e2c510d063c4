"""Generic idempotency-key store, used by the Stripe and Chargebee fakes.

Semantics (Stripe docs, stripe-chargebee.md A.1.5; Chargebee B.1.3):
  - the first request with a key runs and its status and body are stored
    (if the endpoint says the result is storable);
  - the same key with the same parameters replays the stored result and has
    no side effect;
  - the same key with different parameters is an error (provider-specific);
  - a request arriving while another with the same key is still running is a
    conflict (Stripe: 409).
Keys never expire here (tests are much shorter than the 24 h / 30 min
windows).
"""
import threading

FRESH, REPLAY, MISMATCH, IN_FLIGHT = "fresh", "replay", "mismatch", "in_flight"


class IdempotencyStore:
    def __init__(self):
        self._lock = threading.Lock()
        self._done = {}        # key -> (fingerprint, Response)
        self._running = set()

    def run(self, key, fingerprint, fn):
        """fn() -> (Response, storable).  Returns (outcome, Response or None)."""
        with self._lock:
            if key in self._done:
                fp, resp = self._done[key]
                if fp != fingerprint:
                    return MISMATCH, None
                return REPLAY, resp.copy()
            if key in self._running:
                return IN_FLIGHT, None
            self._running.add(key)
        try:
            resp, storable = fn()
            if storable:
                with self._lock:
                    self._done[key] = (fingerprint, resp.copy())
            return FRESH, resp
        finally:
            with self._lock:
                self._running.discard(key)

    def keys(self):
        with self._lock:
            return sorted(self._done)

    def reset(self):
        with self._lock:
            self._done.clear()
            self._running.clear()
