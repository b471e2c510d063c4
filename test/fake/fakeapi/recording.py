"""Recorder: every request to a provider is kept, in arrival order, so tests
can assert on exactly what the worker sent (GET /_control/requests)."""
import threading

from .common import now


class Recorder:
    # Request bodies larger than this are truncated in the record; the worker
    # never sends anything near this, and it keeps /_control/requests small.
    MAX_BODY = 256 * 1024

    def __init__(self):
        self._lock = threading.Lock()
        self._items = []
        self._seq = 0

    def start(self, provider, method, path, query, query_params, headers, body):
        """Create and store the record at arrival; handlers fill in the rest."""
        text = body.decode("utf-8", errors="replace")
        if len(text) > self.MAX_BODY:
            text = text[: self.MAX_BODY] + "...[truncated by fake_api]"
        rec = {
            "seq": 0,
            "at": now(),
            "provider": provider,
            "method": method,
            "path": path,
            "query": query,
            "query_params": query_params,
            "headers": headers,
            "body": text,
            "form": None,
            "json": None,
            "status": None,
            "fault": None,
            "idempotent_replay": False,
            "spec_violations": [],
        }
        with self._lock:
            self._seq += 1
            rec["seq"] = self._seq
            self._items.append(rec)
        return rec

    def list(self, provider=None, since=0):
        with self._lock:
            items = [dict(r) for r in self._items
                     if r["seq"] > since and (provider is None or r["provider"] == provider)]
        return items

    def reset(self):
        with self._lock:
            self._items = []
            self._seq = 0
