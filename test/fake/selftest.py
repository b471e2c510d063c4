#!/usr/bin/python3
"""Self-test of fake_api: starts the server on port 0, exercises every
behaviour the test suite relies on, and prints
`fake selftest: N passed, M failed` (exit status 0 only if M == 0).

  python3 test/fake/selftest.py [--spec PATH] [--fixtures PATH] [-v]
"""
import argparse
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from urllib.parse import quote, urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
SPECS = os.path.join(HERE, "..", "specs")
PORT = None
PASSED, FAILED = 0, []
VERBOSE = False

SK = "sk_test_fake123456789"
CB_KEY = "test_cbkey"
STRIPE_AUTH = {"Authorization": "Bearer " + SK}
CB_AUTH = {"Authorization": "Basic " + base64.b64encode((CB_KEY + ":").encode()).decode()}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# -- tiny harness -------------------------------------------------------------
def check(name, cond, detail=""):
    global PASSED
    if cond:
        PASSED += 1
        if VERBOSE:
            print("ok   " + name)
    else:
        FAILED.append(name)
        print("FAIL %s %s" % (name, detail if isinstance(detail, str) else repr(detail)[:400]))


class R:
    def __init__(self, status, headers, raw):
        self.status, self.headers, self.raw = status, headers, raw
        try:
            self.json = json.loads(raw.decode("utf-8"))
        except ValueError:
            self.json = None

    def h(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<%d %s>" % (self.status, self.raw[:300])


def req(method, path, body=None, headers=None, timeout=10, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = dict(headers or {}, **{"Content-Type": "application/json"})
    elif isinstance(body, str):
        body = body.encode()
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    raw = r.read()
    out = R(r.status, {k.lower(): v for k, v in r.getheaders()}, raw)
    if conn is None:
        c.close()
    return out


def ctl(method, path, body=None):
    r = req(method, "/_control/" + path, body if body is not None else ({} if method == "POST" else None))
    assert r.status == 200, (path, r)
    return r.json


def stripe(method, path, form=None, headers=None, auth=True):
    h = dict(STRIPE_AUTH if auth else {})
    h.update(headers or {})
    body = None
    if form is not None:
        body = form if isinstance(form, str) else urlencode(form)
        h.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return req(method, "/stripe" + path, body, h)


def cb(method, path, form=None, headers=None, auth=True):
    h = dict(CB_AUTH if auth else {})
    h.update(headers or {})
    body = None
    if form is not None:
        body = form if isinstance(form, str) else urlencode(form)
        h.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return req(method, "/chargebee/api/v2" + path, body, h)


def last_request(provider):
    return ctl("GET", "requests?provider=" + provider)[-1]


# -- fixtures ------------------------------------------------------------------
def seed_all():
    ctl("POST", "reset")
    ctl("POST", "seed", {
        "stripe": {
            "customers": [
                {"id": "cus_A", "email": "Alice@Example.com", "metadata": {"keep": "1", "new_user_id": "u-1"}, "age_days": 10},
                {"id": "cus_B", "email": "bob@example.com", "metadata": {"new_user_id": "u-2", "q": "it's \"x\""}, "age_days": 5},
                {"id": "cus_C", "email": "bob@example.com", "metadata": {"new_user_id": "u-3"}, "age_days": 1},
                {"id": "cus_D", "deleted": True},
            ] + [{"id": "cus_P%02d" % i, "email": "p%d@example.com" % i, "metadata": {"grp": "page"}, "age_days": 20 + i} for i in range(12)],
            "invoices": [
                {"id": "in_1", "customer": "cus_A", "status": "paid", "age_days": 3},
                {"id": "in_2", "customer": "cus_A", "status": "paid", "age_days": 40},
                {"id": "in_3", "customer": "cus_A", "status": "open", "age_days": 1},
                {"id": "in_4", "customer": "cus_B", "status": "paid", "age_days": 2},
            ],
            "webhook_endpoints": [{"id": "we_cello", "url": "https://api.cello.so/x"},
                                  {"id": "we_off", "status": "disabled"}],
            "events": [
                {"id": "evt_1", "type": "invoice.paid", "invoice": "in_1", "age_days": 3},
                {"id": "evt_2", "type": "invoice.paid", "data": {"object": {"id": "in_2", "customer": "cus_A"}}, "age_days": 40},
                {"id": "evt_4", "type": "invoice.paid", "data": {"object": {"id": "in_4", "customer": "cus_B"}}, "age_days": 2},
                {"id": "evt_5", "type": "charge.succeeded", "data": {"object": {"id": "ch_1"}}, "age_days": 1},
            ],
        },
        "chargebee": {
            "custom_fields": ["cf_cello_ucc", "cf_new_user_id"],
            "api_keys": [CB_KEY],
            "customers": [
                {"id": "cb_1", "email": "carol@example.com", "meta_data": {"plan": "gold"}, "cf_new_user_id": "u-9", "age_days": 4},
                {"id": "cb_2", "email": "carol@example.com", "age_days": 3},
                {"id": "cb_3", "email": "dan@example.com", "age_days": 2},
            ],
            "events": [
                {"id": "ev_old", "event_type": "payment_succeeded", "age_days": 45,
                 "content": {"transaction": {"customer_id": "cb_1"}, "customer": {"id": "cb_1"}}},
                {"id": "ev_p1", "event_type": "payment_succeeded", "age_days": 5,
                 "content": {"transaction": {"customer_id": "cb_1"}, "customer": {"id": "cb_1"}}},
                {"id": "ev_p2", "event_type": "payment_succeeded", "age_days": 2,
                 "content": {"transaction": {"customer_id": "cb_3"}, "customer": {"id": "cb_3"}}},
                {"id": "ev_c1", "event_type": "customer_created", "age_days": 6, "content": {"customer": {"id": "cb_1"}}},
            ],
        },
        "cello": {"access_key_id": "AKID", "secret_access_key": "SECRET",
                  "referral_codes": {"Ab3dE5gH9kL": {"valid": True, "productUserId": "referrer-9", "campaignId": "c1"}}},
        "chargebee_webhook": {"username": "prod_1", "password": "whpw"},
    })


# -- tests ---------------------------------------------------------------------
def t_shared():
    r = req("GET", "/_control/health")
    check("health", r.status == 200 and r.json == {"ok": True}, r)
    # keep-alive: several requests on one connection, HTTP/1.1, Content-Length always
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
    r1 = req("GET", "/stripe/v1/customers/cus_A", headers=STRIPE_AUTH, conn=c)
    sock1 = c.sock
    r2 = req("GET", "/stripe/v1/customers/nope", headers=STRIPE_AUTH, conn=c)
    check("keepalive reuses connection", c.sock is sock1 and r1.status == 200 and r2.status == 404, (r1, r2))
    check("content-length sent", r1.h("content-length") == str(len(r1.raw)))
    c.close()
    # unknown prefix
    r = req("GET", "/nowhere")
    check("unknown prefix 404", r.status == 404, r)
    # concurrency: a stalled request does not block others
    ctl("POST", "fault", {"provider": "stripe", "path_regex": "^/v1/customers/cus_B$", "action": "stall", "seconds": 1.0})
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", stripe("GET", "/v1/customers/cus_B")))
    t0 = time.time()
    th.start()
    time.sleep(0.1)
    r = stripe("GET", "/v1/customers/cus_A")
    fast = time.time() - t0
    th.join()
    slow = time.time() - t0
    check("concurrent: fast request not blocked by stall", r.status == 200 and fast < 0.8, fast)
    check("stall then normal answer", out["r"].status == 200 and slow >= 1.0 and out["r"].json["id"] == "cus_B", (slow, out))
    rec = [x for x in ctl("GET", "requests?provider=stripe") if x["path"] == "/v1/customers/cus_B"][-1]
    check("stall recorded as fault", rec["fault"] == "stall" and rec["status"] == 200, rec)
    # form decoding: + is space, UTF-8 percent-decoding, brackets encoded or not
    r = stripe("POST", "/v1/customers/cus_C", "metadata%5Bnote%5D=J%C3%BCrgen+M%C3%BCller&metadata[plus]=a%2Bb")
    md = r.json["metadata"] if r.json else {}
    check("form decoding (+ space, utf-8, %5B%5D)", md.get("note") == "Jürgen Müller" and md.get("plus") == "a+b", r)
    rec = last_request("stripe")
    check("record form rack keys", rec["form"] == {"metadata[note]": ["Jürgen Müller"], "metadata[plus]": ["a+b"]}, rec["form"])
    check("record headers lower-case, auth as received", rec["headers"].get("authorization") == "Bearer " + SK
          and rec["headers"].get("content-type") == "application/x-www-form-urlencoded", rec["headers"])
    check("record fields", all(k in rec for k in ("seq", "at", "provider", "method", "path", "query", "query_params", "body",
                                                   "json", "status", "fault", "idempotent_replay", "spec_violations")), rec)
    r = stripe("POST", "/v1/customers/cus_C", "metadata[bad]=%FF%FE")
    check("invalid utf-8 -> 400", r.status == 400, r)
    r = stripe("GET", "/v1/customers?email=bob%40example.com&limit=3")
    rec = last_request("stripe")
    check("record query_params", rec["query_params"] == {"email": ["bob@example.com"], "limit": ["3"]} and rec["query"] == "email=bob%40example.com&limit=3", rec)
    # requests?since
    n = rec["seq"]
    stripe("GET", "/v1/customers/cus_A")
    check("requests since", [x["seq"] for x in ctl("GET", "requests?since=%d" % n)] == [n + 1])


def t_stripe_auth_and_lookup():
    r = stripe("GET", "/v1/customers/cus_A", auth=False)
    check("stripe no auth 401", r.status == 401 and r.json["error"]["type"] == "invalid_request_error", r)
    r = stripe("GET", "/v1/customers/cus_A", auth=False, headers={"Authorization": "Bearer pk_test_x"})
    check("stripe publishable key 401", r.status == 401, r)
    r = stripe("GET", "/v1/customers/cus_A", auth=False,
               headers={"Authorization": "Basic " + base64.b64encode(b"rk_test_abc:").decode()})
    check("stripe basic rk_ key ok", r.status == 200, r)
    r = stripe("GET", "/v1/customers/cus_A")
    check("stripe get customer", r.status == 200 and r.json["object"] == "customer" and r.json["metadata"]["keep"] == "1"
          and "invoice_settings" in r.json, r)
    check("stripe Request-Id header", (r.h("request-id") or "").startswith("req_"), r.headers)
    r = stripe("GET", "/v1/customers/cus_nope")
    e = (r.json or {}).get("error", {})
    check("stripe 404 resource_missing", r.status == 404 and e.get("code") == "resource_missing" and e.get("param") == "id"
          and e.get("message") == "No such customer: 'cus_nope'", r)
    r = stripe("GET", "/v1/customers/cus_D")
    check("stripe deleted customer", r.status == 200 and r.json == {"id": "cus_D", "object": "customer", "deleted": True}, r)
    # list by email: exact, case-sensitive, pagination
    r = stripe("GET", "/v1/customers?email=bob@example.com")
    check("stripe list email", r.status == 200 and [c["id"] for c in r.json["data"]] == ["cus_C", "cus_B"]
          and r.json["object"] == "list" and r.json["url"] == "/v1/customers" and r.json["has_more"] is False, r)
    r = stripe("GET", "/v1/customers?email=alice@example.com")
    check("stripe list email case-sensitive", r.status == 200 and r.json["data"] == [], r)
    r = stripe("GET", "/v1/customers?email=bob@example.com&limit=1")
    r2 = stripe("GET", "/v1/customers?email=bob@example.com&limit=1&starting_after=cus_C")
    check("stripe list pagination", r.json["has_more"] is True and r2.json["data"][0]["id"] == "cus_B" and r2.json["has_more"] is False, (r, r2))
    r = stripe("GET", "/v1/customers?ending_before=cus_B&limit=1&email=bob@example.com")
    check("stripe list ending_before", [c["id"] for c in r.json["data"]] == ["cus_C"], r)
    r = stripe("GET", "/v1/customers?starting_after=cus_zzz")
    check("stripe list bad cursor 404", r.status == 404 and r.json["error"]["param"] == "starting_after", r)


def t_stripe_search():
    def s(q, extra=""):
        return stripe("GET", "/v1/customers/search?query=" + quote(q, safe="") + extra)
    r = s("metadata['new_user_id']:'u-2'")
    check("search metadata single quotes", r.status == 200 and [c["id"] for c in r.json["data"]] == ["cus_B"]
          and r.json["object"] == "search_result" and r.json["url"] == "/v1/customers/search" and r.json["next_page"] is None, r)
    r = s('metadata["new_user_id"]:"u-3"')
    check("search metadata double quotes", [c["id"] for c in r.json["data"]] == ["cus_C"], r)
    r = s('metadata["q"]:"it\'s \\"x\\""')
    check("search escaped quotes", r.status == 200 and [c["id"] for c in r.json["data"]] == ["cus_B"], r)
    r = s("email:'alice@example.COM'")
    check("search email case-insensitive", [c["id"] for c in r.json["data"]] == ["cus_A"], r)
    r = s("email:'bob@example.com' AND metadata['new_user_id']:'u-3'")
    check("search AND", [c["id"] for c in r.json["data"]] == ["cus_C"], r)
    r = s("email:'bob@example.com' metadata['new_user_id']:'u-2'")
    check("search space = AND", [c["id"] for c in r.json["data"]] == ["cus_B"], r)
    r = s("metadata['new_user_id']:'u-404'")
    check("search no match", r.status == 200 and r.json["data"] == [] and r.json["has_more"] is False, r)
    r = s("metadata['grp']:'page'", "&limit=5")
    seen = [c["id"] for c in r.json["data"]]
    pages = 1
    while r.json["has_more"]:
        r = s("metadata['grp']:'page'", "&limit=5&page=" + quote(r.json["next_page"]))
        seen += [c["id"] for c in r.json["data"]]
        pages += 1
    check("search pagination", pages == 3 and len(seen) == 12 and len(set(seen)) == 12 and seen[0] == "cus_P00", seen)
    r = s("metadata['grp']:'page'", "&page=page_bogus")
    check("search bad page 400", r.status == 400 and r.json["error"]["param"] == "page", r)
    r = s("metadata[new_user_id]:'u-2'")
    check("search bad syntax 400", r.status == 400 and r.json["error"]["param"] == "query", r)
    r = s("email:'a' OR email:'b' AND email:'c'")
    check("search mixed AND/OR 400", r.status == 400, r)


def t_stripe_update():
    ctl("POST", "reset")
    seed_all()
    n_ev = len(ctl("GET", "state?provider=stripe")["events"])
    r = stripe("POST", "/v1/customers/cus_A", {"metadata[cello_ucc]": "Ab3dE5gH9kL", "metadata[new_user_id]": "u-1x"})
    check("update sets keys, keeps others", r.status == 200 and r.json["metadata"] == {"keep": "1", "new_user_id": "u-1x", "cello_ucc": "Ab3dE5gH9kL"}, r)
    evs = ctl("GET", "state?provider=stripe")["events"]
    ev = evs[-1]
    check("customer.updated emitted", len(evs) == n_ev + 1 and ev["type"] == "customer.updated"
          and ev["data"]["object"]["metadata"]["cello_ucc"] == "Ab3dE5gH9kL"
          and ev["data"]["previous_attributes"] == {"metadata": {"keep": "1", "new_user_id": "u-1"}}, ev)
    r = stripe("POST", "/v1/customers/cus_A", "metadata[keep]=")
    check("empty value unsets key", "keep" not in r.json["metadata"] and "cello_ucc" in r.json["metadata"], r)
    r = stripe("POST", "/v1/customers/cus_A", "metadata=")
    check("metadata= clears all", r.json["metadata"] == {}, r)
    r = stripe("POST", "/v1/customers/cus_A", {"metadata[" + "k" * 41 + "]": "v"})
    check("key > 40 chars 400", r.status == 400 and r.json["error"]["type"] == "invalid_request_error" and "param" in r.json["error"], r)
    r = stripe("POST", "/v1/customers/cus_A", {"metadata[k]": "v" * 501})
    check("value > 500 chars 400", r.status == 400, r)
    r = stripe("POST", "/v1/customers/cus_A", {"metadata[a[b]]": "v"})
    check("bracket in key 400", r.status == 400, r)
    r = stripe("POST", "/v1/customers/cus_A", {"metadata[k%d]" % i: "v" for i in range(51)})
    check("51 keys 400", r.status == 400 and r.json["error"]["param"] == "metadata", r)
    r = stripe("POST", "/v1/customers/cus_A", {"metadata[k%d]" % i: "v" for i in range(50)})
    check("50 keys ok", r.status == 200 and len(r.json["metadata"]) == 50, r)
    r = stripe("POST", "/v1/customers/cus_nope", {"metadata[a]": "b"})
    check("update unknown customer 404", r.status == 404, r)
    r = stripe("POST", "/v1/customers/cus_A", "metadata[a]=b", headers={"Content-Type": "application/json"})
    rec = last_request("stripe")
    check("POST without form content-type 400 + violation", r.status == 400 and rec["spec_violations"], (r, rec["spec_violations"]))
    r = stripe("POST", "/v1/customers/cus_A", {"metadata[a]": "b", "frobnicate": "1"})
    rec = last_request("stripe")
    check("unknown form param 400 + violation", r.status == 400 and r.json["error"]["message"] == "Received unknown parameter: frobnicate"
          and r.json["error"]["param"] == "frobnicate" and any("frobnicate" in v for v in rec["spec_violations"]), (r, rec))


def t_stripe_idempotency():
    seed_all()
    nevents = lambda: len(ctl("GET", "state?provider=stripe")["events"])  # noqa: E731
    n0 = nevents()
    h = {"Idempotency-Key": "cello-attr-1-custupd"}
    r1 = stripe("POST", "/v1/customers/cus_B", {"metadata[cello_ucc]": "Ab3dE5gH9kL"}, headers=h)
    r2 = stripe("POST", "/v1/customers/cus_B", {"metadata[cello_ucc]": "Ab3dE5gH9kL"}, headers=h)
    check("idempotency key echoed", r1.h("idempotency-key") == "cello-attr-1-custupd", r1.headers)
    check("idempotent replay", r2.status == 200 and r2.raw == r1.raw and r2.h("idempotent-replayed") == "true"
          and r1.h("idempotent-replayed") is None, (r1.headers, r2.headers))
    check("replay has no side effect", nevents() == n0 + 1, nevents())
    check("replay recorded", last_request("stripe")["idempotent_replay"] is True)
    r3 = stripe("POST", "/v1/customers/cus_B", {"metadata[cello_ucc]": "OTHER123456"}, headers=h)
    check("same key different params 400 idempotency_error", r3.status == 400 and r3.json["error"]["type"] == "idempotency_error", r3)
    # 429 from the edge is not stored: the retry with the same key runs for real
    ctl("POST", "fault", {"provider": "stripe", "method": "POST", "action": "rate_limit", "retry_after": 2})
    h2 = {"Idempotency-Key": "k-429"}
    r = stripe("POST", "/v1/customers/cus_C", {"metadata[x]": "1"}, headers=h2)
    check("rate_limit 429 body + Retry-After", r.status == 429 and r.json["error"]["code"] == "rate_limit"
          and r.h("retry-after") == "2" and r.h("request-id"), r)
    check("429 recorded with fault", last_request("stripe")["fault"] == "rate_limit")
    r = stripe("POST", "/v1/customers/cus_C", {"metadata[x]": "1"}, headers=h2)
    check("after 429 same key runs fresh", r.status == 200 and r.h("idempotent-replayed") is None, r)
    ctl("POST", "fault", {"provider": "stripe", "action": "rate_limit"})
    r = stripe("GET", "/v1/customers/cus_C")
    check("rate_limit without retry_after: no header", r.status == 429 and r.h("retry-after") is None, r.headers)
    # a 500 produced by the endpoint is stored and replayed (Stripe replays 500s)
    ctl("POST", "fault", {"provider": "stripe", "method": "POST", "action": "status", "status": 500, "stage": "handler"})
    h3 = {"Idempotency-Key": "k-500"}
    r1 = stripe("POST", "/v1/customers/cus_C", {"metadata[y]": "1"}, headers=h3)
    r2 = stripe("POST", "/v1/customers/cus_C", {"metadata[y]": "1"}, headers=h3)
    check("handler 500 stored and replayed", r1.status == 500 and r2.status == 500 and r2.h("idempotent-replayed") == "true"
          and r1.json["error"]["type"] == "api_error", (r1, r2))
    # edge 500 is not stored
    ctl("POST", "fault", {"provider": "stripe", "method": "POST", "action": "status", "status": 502})
    h4 = {"Idempotency-Key": "k-502"}
    r1 = stripe("POST", "/v1/customers/cus_C", {"metadata[z]": "1"}, headers=h4)
    r2 = stripe("POST", "/v1/customers/cus_C", {"metadata[z]": "1"}, headers=h4)
    check("edge 502 not stored", r1.status == 502 and r2.status == 200 and r2.h("idempotent-replayed") is None, (r1, r2))
    # apply + drop: the update happened but the client saw nothing; retry replays
    ctl("POST", "fault", {"provider": "stripe", "method": "POST", "action": "drop", "apply": True})
    h5 = {"Idempotency-Key": "k-drop"}
    n1 = nevents()
    try:
        stripe("POST", "/v1/customers/cus_A", {"metadata[w]": "1"}, headers=h5)
        dropped = False
    except (http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine):
        dropped = True
    r = stripe("POST", "/v1/customers/cus_A", {"metadata[w]": "1"}, headers=h5)
    check("drop+apply: side effect once, retry replays", dropped and r.status == 200 and r.h("idempotent-replayed") == "true"
          and nevents() == n1 + 1 and r.json["metadata"].get("w") == "1", (dropped, r))


def t_stripe_events():
    seed_all()
    r = stripe("GET", "/v1/events?type=invoice.paid&limit=100")
    ids = [e["id"] for e in r.json["data"]]
    check("events list newest first, retention 30d", r.status == 200 and ids == ["evt_4", "evt_1"] and r.json["url"] == "/v1/events", ids)
    check("seeded event expanded from invoice", r.json["data"][1]["data"]["object"]["customer"] == "cus_A"
          and r.json["data"][1]["data"]["object"]["status"] == "paid", r.json["data"][1]["data"]["object"].get("status"))
    r = stripe("GET", "/v1/events?type=invoice.*")
    check("events type wildcard", [e["id"] for e in r.json["data"]] == ["evt_4", "evt_1"], r)
    r = stripe("GET", "/v1/events?types[]=charge.succeeded&types[]=invoice.paid")
    check("events types[]", [e["id"] for e in r.json["data"]] == ["evt_5", "evt_4", "evt_1"], r)
    r = stripe("GET", "/v1/events?type=invoice.paid&types[]=invoice.paid")
    check("events type+types 400", r.status == 400, r)
    cutoff = int(time.time()) - int(2.5 * 86400)
    r = stripe("GET", "/v1/events?created[gte]=%d" % cutoff)
    check("events created[gte]", [e["id"] for e in r.json["data"]] == ["evt_5", "evt_4"], r)
    r = stripe("GET", "/v1/events?limit=1")
    r2 = stripe("GET", "/v1/events?limit=1&starting_after=" + r.json["data"][0]["id"])
    check("events pagination", r.json["has_more"] is True and r2.json["data"][0]["id"] == "evt_4", (r, r2))
    for bad in ("0", "101", "abc"):
        r = stripe("GET", "/v1/events?limit=" + bad)
        rec = last_request("stripe")
        check("events limit=%s 400 + violation" % bad, r.status == 400 and r.json["error"]["param"] == "limit" and rec["spec_violations"], r)
    r = stripe("GET", "/v1/events/evt_2")
    check("get event (even old)", r.status == 200 and r.json["id"] == "evt_2" and r.json["object"] == "event", r)
    r = stripe("GET", "/v1/events/evt_nope")
    check("get event 404", r.status == 404 and r.json["error"]["code"] == "resource_missing", r)
    # retry
    r = stripe("POST", "/v1/events/evt_1/retry", {"webhook_endpoint": "we_cello"})
    dl = ctl("GET", "deliveries")
    check("retry ok + delivery", r.status == 200 and r.json["id"] == "evt_1" and dl and dl[-1]["event_id"] == "evt_1"
          and dl[-1]["webhook_endpoint"] == "we_cello" and dl[-1]["provider"] == "stripe" and dl[-1]["customer"] == "cus_A", (r, dl))
    check("retry is not a spec violation", last_request("stripe")["spec_violations"] == [])
    r = stripe("POST", "/v1/events/evt_1/retry", {"webhook_endpoint": "we_cello", "account": "acct_1"},
               headers={"Idempotency-Key": "rs-1"})
    r2 = stripe("POST", "/v1/events/evt_1/retry", {"webhook_endpoint": "we_cello", "account": "acct_1"},
                headers={"Idempotency-Key": "rs-1"})
    check("retry idempotent: one delivery", r2.h("idempotent-replayed") == "true" and len(ctl("GET", "deliveries")) == 2, ctl("GET", "deliveries"))
    r = stripe("POST", "/v1/events/evt_2/retry", {"webhook_endpoint": "we_cello"})
    check("retry > 30 days 400", r.status == 400 and r.json["error"]["message"] == "Events older than 30 days cannot be resent.", r)
    r = stripe("POST", "/v1/events/evt_nope/retry", {"webhook_endpoint": "we_cello"})
    check("retry unknown event 404", r.status == 404 and r.json["error"]["code"] == "resource_missing", r)
    r = stripe("POST", "/v1/events/evt_1/retry", {"webhook_endpoint": "we_nope"})
    check("retry unknown endpoint 404", r.status == 404 and r.json["error"]["param"] == "webhook_endpoint", r)
    r = stripe("POST", "/v1/events/evt_1/retry", {"webhook_endpoint": "we_off"})
    check("retry disabled endpoint 400", r.status == 400, r)
    r = stripe("POST", "/v1/events/evt_1/retry", {"for_stripecli": "true"})
    check("retry unknown param 400", r.status == 400 and r.json["error"]["param"] == "for_stripecli", r)
    check("failed retries made no delivery", len(ctl("GET", "deliveries")) == 2)
    # invoices / webhook endpoints
    r = stripe("GET", "/v1/invoices?customer=cus_A&status=paid&limit=100")
    check("invoices by customer+status newest first", [i["id"] for i in r.json["data"]] == ["in_1", "in_2"], r)
    cutoff = int(time.time()) - 30 * 86400
    r = stripe("GET", "/v1/invoices?customer=cus_A&status=paid&created[gte]=%d" % cutoff)
    check("invoices created[gte]", [i["id"] for i in r.json["data"]] == ["in_1"], r)
    r = stripe("GET", "/v1/invoices?status=bogus")
    check("invoices bad status 400", r.status == 400, r)
    r = stripe("GET", "/v1/webhook_endpoints?limit=100")
    check("webhook endpoints list", r.status == 200 and {w["id"] for w in r.json["data"]} == {"we_cello", "we_off"}
          and r.json["data"][0]["object"] == "webhook_endpoint", r)


def t_stripe_spec():
    r = stripe("GET", "/v1/frobs")
    rec = last_request("stripe")
    check("unknown path 404 Unrecognized request URL", r.status == 404 and r.json["error"]["message"].startswith("Unrecognized request URL (GET: /v1/frobs)")
          and rec["spec_violations"], r)
    r = stripe("PUT", "/v1/customers/cus_A", "a=b")
    check("unknown method 404", r.status == 404, r)
    r = stripe("GET", "/v1/customers?email=" + "a" * 513)
    check("maxLength 400", r.status == 400 and r.json["error"]["param"] == "email" and last_request("stripe")["spec_violations"], r)
    r = stripe("GET", "/v1/customers/cus_A?expand[]=default_source")
    check("declared deepObject param ok", r.status == 200 and last_request("stripe")["spec_violations"] == [], r)
    r = stripe("GET", "/v1/charges")
    check("spec op not implemented 501", r.status == 501 and last_request("stripe")["spec_violations"] == [], r)
    r = stripe("GET", "/v1/customers/cus_A?foo[bar]=1", auth=False)
    check("violation recorded even when auth fails", r.status == 401 and last_request("stripe")["spec_violations"], r)


def t_faults():
    seed_all()
    ctl("POST", "fault", {"provider": "stripe", "action": "status", "status": 503, "count": 2})
    rs = [stripe("GET", "/v1/customers/cus_A") for _ in range(3)]
    check("status fault count", [r.status for r in rs] == [503, 503, 200] and rs[0].json["error"]["type"] == "api_error", rs)
    ctl("POST", "fault", {"provider": "any", "action": "status", "status": 400, "body": {"custom": 1}, "headers": {"X-Test": "y"}})
    r = cb("GET", "/customers/cb_1")
    check("status fault custom body/headers, any provider", r.status == 400 and r.json == {"custom": 1} and r.h("x-test") == "y", r)
    ctl("POST", "fault", {"provider": "stripe", "action": "status", "status": 200,
                          "body_hex": "7b226e616d65223a2261ff62227d"})
    r = stripe("GET", "/v1/customers/cus_A")
    check("status fault with raw body_hex bytes (invalid UTF-8)",
          r.status == 200 and r.raw == b'{"name":"a\xffb"}', r)
    ctl("POST", "fault", {"provider": "chargebee", "action": "status", "status": 503})
    r = cb("GET", "/customers/cb_1")
    check("chargebee default 503 body", r.status == 503 and r.json["api_error_code"] == "internal_temporary_error", r)
    ctl("POST", "fault", {"provider": "stripe", "action": "malformed"})
    r = stripe("GET", "/v1/customers/cus_A")
    check("malformed", r.status == 200 and r.json is None and len(r.raw) > 0, r)
    ctl("POST", "fault", {"provider": "stripe", "action": "huge", "bytes": 1000000})
    r = stripe("GET", "/v1/customers/cus_A")
    check("huge", r.status == 200 and len(r.raw) == 1000000 and r.json is not None, len(r.raw))
    ctl("POST", "fault", {"provider": "stripe", "action": "shape"})
    r = stripe("GET", "/v1/customers/cus_A")
    check("shape", r.status == 200 and r.json == {"unexpected": True}, r)
    ctl("POST", "fault", {"provider": "stripe", "method": "GET", "path_regex": "^/v1/events$", "action": "drop"})
    r = stripe("GET", "/v1/customers/cus_A")
    check("fault path_regex does not match others", r.status == 200, r)
    try:
        stripe("GET", "/v1/events")
        check("drop closes without response", False, "got a response")
    except (http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine):
        check("drop closes without response", True)
    rec = last_request("stripe")
    check("drop recorded", rec["fault"] == "drop" and rec["status"] is None, rec)
    ctl("POST", "fault", {"provider": "cello", "action": "stall_body", "seconds": 2})
    t0 = time.time()
    try:
        req("GET", "/cello/referral-codes/x", timeout=0.5)
        ok = False
    except (socket.timeout, TimeoutError, http.client.IncompleteRead):
        ok = True
    check("stall_body: headers then stall", ok and time.time() - t0 < 1.5, time.time() - t0)
    c = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    ctl("POST", "fault", {"provider": "cello", "action": "stall_body", "seconds": 0.3})
    c.sendall(b"GET /cello/referral-codes/x HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    clen = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    check("stall_body: short body then close", head.startswith(b"HTTP/1.1 200") and 0 < len(body) < clen, (head, len(body), clen))
    r = req("POST", "/_control/fault", {"action": "explode"})
    check("bad fault rejected", r.status == 400, r)
    ctl("POST", "fault", {"provider": "stripe", "action": "status", "status": 500, "count": 0})
    check("unlimited fault listed", ctl("GET", "faults")[0]["remaining"] is None)
    ctl("POST", "faults/clear")
    check("faults cleared", stripe("GET", "/v1/customers/cus_A").status == 200)


def t_cello():
    seed_all()
    r = req("POST", "/cello/token", {"accessKeyId": "AKID", "secretAccessKey": "bad"})
    check("cello bad creds 401 shape", r.status == 401 and r.json["message"] == "Invalid API Credentials"
          and r.json["path"] == "/api/token" and r.json["statusCode"] == 401, r)
    r = req("POST", "/cello/token", {"accessKeyId": "AKID", "secretAccessKey": "SECRET"})
    tok = r.json or {}
    check("cello token 201", r.status == 201 and set(tok) == {"accessToken", "refreshToken", "expiresIn", "refreshTokenExpiresIn"}
          and tok["expiresIn"] == 18000 and tok["refreshTokenExpiresIn"] == 432000, r)
    check("cello apigw-requestid header", bool(r.h("apigw-requestid")))
    auth = {"Authorization": "Bearer " + tok.get("accessToken", "")}
    r = req("GET", "/cello/referral-codes/Ab3dE5gH9kL", headers=auth)
    check("cello referral code valid", r.status == 200 and r.json == {"code": "Ab3dE5gH9kL", "productUserId": "referrer-9", "valid": True, "campaignId": "c1"}, r)
    r = req("GET", "/cello/referral-codes/NOPE", headers=auth)
    check("cello referral code unknown", r.status == 200 and r.json == {"code": "NOPE", "productUserId": "", "valid": False, "campaignId": ""}, r)
    r = req("GET", "/cello/referral-codes/NOPE")
    check("cello no token 401", r.status == 401 and r.json == {"message": "Unauthorized"}, r)
    signup = {"eventName": "ReferralUpdated",
              "payload": {"ucc": "Ab3dE5gH9kL", "newUserId": "user-42", "price": 0, "currency": ""},
              "context": {"newUser": {"id": "user-42", "email": "jane@example.com", "name": "Jane", "organizationId": "org-7"},
                          "event": {"trigger": "new-signup", "timestamp": "2024-05-01T09:30:00Z"}}}
    r = req("POST", "/cello/events", signup, headers=auth)
    check("cello new-signup 200", r.status == 200 and r.json == {"success": True}, r)
    paid = {"eventName": "ReferralUpdated",
            "payload": {"ucc": "Ab3dE5gH9kL", "newUserId": "user-42", "price": 49, "currency": "EUR"},
            "context": {"newUser": {"id": "user-42", "email": "jane@example.com"},
                        "event": {"trigger": "invoice-paid", "timestamp": "2024-05-03T10:00:00+02:00"},
                        "subscription": {"id": "sub_1", "invoiceId": "in_456", "interval": "monthly", "productKey": "Team"}}}
    r = req("POST", "/cello/events", paid, headers=auth)
    check("cello invoice-paid 200", r.status == 200, r)
    st = ctl("GET", "state?provider=cello")
    check("cello events stored", [e["trigger"] for e in st["events"]] == ["new-signup", "invoice-paid"]
          and st["events"][1]["invoiceId"] == "in_456", st["events"])

    def bad(name, mutate, field):
        body = json.loads(json.dumps(paid))
        mutate(body)
        r = req("POST", "/cello/events", body, headers=auth)
        check("cello 400: " + name, r.status == 400 and field in (r.json or {}).get("message", ""), r)
    bad("missing productKey", lambda b: b["context"]["subscription"].pop("productKey"), "subscription.productKey")
    bad("missing newUser.email", lambda b: b["context"]["newUser"].pop("email"), "newUser.email")
    bad("missing price", lambda b: b["payload"].pop("price"), "payload.price")
    bad("bad interval", lambda b: b["context"]["subscription"].update(interval="fortnightly"), "interval")
    bad("timestamp without T", lambda b: b["context"]["event"].update(timestamp="2024-05-03 10:00:00"), "timestamp")
    bad("timestamp without offset", lambda b: b["context"]["event"].update(timestamp="2024-05-03T10:00:00"), "timestamp")
    bad("bad trigger", lambda b: b["context"]["event"].update(trigger="demo-attended"), "trigger")
    bad("eventName", lambda b: b.update(eventName="Other"), "eventName")
    bad("unknown top-level key", lambda b: b.update(extra=1), "extra")
    bad("missing ucc", lambda b: b["payload"].pop("ucc"), "payload.ucc")
    s2 = json.loads(json.dumps(signup))
    s2["context"]["newUser"].pop("id")
    r = req("POST", "/cello/events", s2, headers=auth)
    check("cello new-signup needs newUser.id", r.status == 400 and "newUser.id" in r.json["message"], r)
    # refresh, expiry
    r = req("POST", "/cello/token", {"refreshToken": tok.get("refreshToken")})
    check("cello refresh 201", r.status == 201 and set(r.json) == {"accessToken", "expiresIn"} and r.json["accessToken"] != tok["accessToken"], r)
    new_auth = {"Authorization": "Bearer " + r.json["accessToken"]}
    ctl("POST", "cello/expire", {"access": True})
    r = req("POST", "/cello/events", signup, headers=new_auth)
    check("cello expired access token 401", r.status == 401, r)
    r = req("POST", "/cello/token", {"refreshToken": tok.get("refreshToken")})
    check("cello refresh still ok after access expiry", r.status == 201, r)
    ctl("POST", "cello/expire", {"access": True, "refresh": True})
    r = req("POST", "/cello/token", {"refreshToken": tok.get("refreshToken")})
    check("cello expired refresh 401", r.status == 401, r)
    ctl("POST", "seed", {"cello": {"token_ttl": 1}})
    r = req("POST", "/cello/token", {"accessKeyId": "AKID", "secretAccessKey": "SECRET"})
    check("cello seeded ttl", r.json["expiresIn"] == 1, r)
    ctl("POST", "fault", {"provider": "cello", "action": "rate_limit", "retry_after": 1})
    r = req("POST", "/cello/token", {"accessKeyId": "AKID", "secretAccessKey": "SECRET"})
    check("cello rate limit", r.status == 429 and r.h("retry-after") == "1" and r.json == {"message": "Too Many Requests"}, r)


def t_chargebee():
    seed_all()
    r = cb("GET", "/customers/cb_1", auth=False)
    check("cb no auth 401", r.status == 401 and r.json["api_error_code"] == "api_authentication_failed"
          and r.json["http_status_code"] == 401 and r.json["error_code"] == "api_authentication_failed", r)
    r = cb("GET", "/customers/cb_1", auth=False, headers={"Authorization": "Basic " + base64.b64encode(b"test_cbkey:pw").decode()})
    check("cb password not empty 401", r.status == 401, r)
    r = cb("GET", "/customers/cb_1")
    check("cb get customer", r.status == 200 and r.json["customer"]["id"] == "cb_1" and r.json["customer"]["meta_data"] == {"plan": "gold"}
          and r.json["customer"]["object"] == "customer", r)
    r = cb("GET", "/customers/cb_nope")
    check("cb 404", r.status == 404 and r.json["api_error_code"] == "resource_not_found" and r.json["type"] == "invalid_request", r)
    r = cb("GET", "/customers?email[is]=carol@example.com&limit=1")
    r2 = cb("GET", "/customers?email[is]=carol@example.com&limit=1&offset=" + quote(r.json.get("next_offset", "")))
    check("cb list email + next_offset", [x["customer"]["id"] for x in r.json["list"]] == ["cb_2"] and "next_offset" in r.json
          and [x["customer"]["id"] for x in r2.json["list"]] == ["cb_1"] and "next_offset" not in r2.json, (r, r2))
    r = cb("GET", "/customers?cf_new_user_id[is]=u-9")
    check("cb list cf filter", [x["customer"]["id"] for x in r.json["list"]] == ["cb_1"], r)
    r = cb("GET", "/customers?cf_unknown[is]=x")
    check("cb list unknown cf 400", r.status == 400, r)
    r = cb("GET", "/customers?offset=garbage")
    check("cb bad offset 400", r.status == 400 and r.json["param"] == "offset", r)
    r = cb("GET", "/customers?limit=101")
    check("cb limit 101 400", r.status == 400, r)
    # update: meta_data replaces wholesale
    h = {"chargebee-idempotency-key": "cb-key-1"}
    md = json.dumps({"cello_ucc": "Ab3dE5gH9kL", "new_user_id": "u-9"})
    r = cb("POST", "/customers/cb_1", {"meta_data": md}, headers=h)
    check("cb meta_data replaces", r.status == 200 and r.json["customer"]["meta_data"] == {"cello_ucc": "Ab3dE5gH9kL", "new_user_id": "u-9"}, r)
    st = ctl("GET", "state?provider=chargebee")
    ev = st["events"][-1]
    check("cb customer_changed emitted", ev["event_type"] == "customer_changed" and ev["content"]["customer"]["id"] == "cb_1", ev)
    n = len(st["events"])
    r2 = cb("POST", "/customers/cb_1", {"meta_data": md}, headers=h)
    check("cb idempotent replay", r2.status == 200 and r2.raw == r.raw and r2.h("chargebee-idempotency-replayed") == "true"
          and len(ctl("GET", "state?provider=chargebee")["events"]) == n, r2.headers)
    r3 = cb("POST", "/customers/cb_1", {"meta_data": "{}"}, headers=h)
    check("cb idempotency mismatch 422", r3.status == 422 and r3.json["api_error_code"] == "unable_to_process_request", r3)
    r = cb("POST", "/customers/cb_1", {"cf_cello_ucc": "Ab3dE5gH9kL"})
    check("cb cf_ field set", r.status == 200 and r.json["customer"]["cf_cello_ucc"] == "Ab3dE5gH9kL"
          and r.json["customer"]["meta_data"]["cello_ucc"] == "Ab3dE5gH9kL", r)
    r = cb("POST", "/customers/cb_1", {"cf_nope": "x"})
    check("cb unknown cf_ 400", r.status == 400 and r.json["param"] == "cf_nope", r)
    r = cb("POST", "/customers/cb_1", {"frob": "x"})
    check("cb unknown param 400", r.status == 400 and r.json["param"] == "frob", r)
    r = cb("POST", "/customers/cb_1", {"meta_data[cello_ucc]": "x"})
    check("cb meta_data as bracket param 400", r.status == 400, r)
    r = cb("POST", "/customers/cb_1", {"meta_data": "{not json"})
    check("cb meta_data bad JSON 400", r.status == 400 and r.json["param"] == "meta_data", r)
    r = cb("POST", "/customers/cb_1", {"cf_cello_ucc": "x" * 100})
    check("cb cf_ too long 400", r.status == 400, r)
    # events
    r = cb("GET", "/events?event_type[is]=payment_succeeded&limit=100")
    check("cb events newest first", [x["event"]["id"] for x in r.json["list"]] == ["ev_p2", "ev_p1", "ev_old"]
          and r.json["list"][0]["event"]["object"] == "event" and r.json["list"][0]["event"]["api_version"] == "v2", r)
    after = int(time.time()) - 30 * 86400
    r = cb("GET", "/events?event_type[is]=payment_succeeded&occurred_at[after]=%d&sort_by[asc]=occurred_at&limit=1" % after)
    r2 = cb("GET", "/events?event_type[is]=payment_succeeded&occurred_at[after]=%d&sort_by[asc]=occurred_at&limit=1&offset=%s"
            % (after, quote(r.json.get("next_offset", ""))))
    check("cb events after+asc+offset", [x["event"]["id"] for x in r.json["list"]] == ["ev_p1"]
          and [x["event"]["id"] for x in r2.json["list"]] == ["ev_p2"] and "next_offset" not in r2.json, (r, r2))
    r = cb("GET", '/events?event_type[in]=' + quote('["customer_created","customer_changed"]'))
    check("cb events event_type[in]", {x["event"]["event_type"] for x in r.json["list"]} == {"customer_created", "customer_changed"}, r)
    r = cb("GET", "/events?customer_id[is]=cb_1")
    check("cb events customer filter 400", r.status == 400, r)
    r = cb("GET", "/events/ev_p1")
    check("cb get event", r.status == 200 and r.json["event"]["id"] == "ev_p1", r)
    ctl("POST", "fault", {"provider": "chargebee", "action": "rate_limit", "retry_after": 3})
    r = cb("GET", "/events")
    check("cb rate limit", r.status == 429 and r.json["api_error_code"] == "api_request_limit_exceeded" and r.h("retry-after") == "3", r)


def t_cello_webhook():
    seed_all()
    ev = ctl("GET", "state?provider=chargebee")["events"][1]
    good = {"Authorization": "Basic " + base64.b64encode(b"prod_1:whpw").decode()}
    r = req("POST", "/cello-webhook/chargebee", ev)
    check("webhook no auth 401", r.status == 401, r)
    r = req("POST", "/cello-webhook/chargebee", ev, headers={"Authorization": "Basic " + base64.b64encode(b"prod_1:no").decode()})
    check("webhook bad auth 401", r.status == 401, r)
    r = req("POST", "/cello-webhook/chargebee", json.dumps(ev), headers=dict(good, **{"Content-Type": "text/plain"}))
    check("webhook wrong content type 400", r.status == 400, r)
    r = req("POST", "/cello-webhook/chargebee", {"event": ev}, headers=good)
    check("webhook wrapped event 400", r.status == 400, r)
    r = req("POST", "/cello-webhook/chargebee", ev, headers=good)
    dl = ctl("GET", "deliveries")
    check("webhook delivery recorded", r.status == 200 and dl[-1]["provider"] == "chargebee" and dl[-1]["event_id"] == ev["id"]
          and dl[-1]["body"] == ev and dl[-1]["matches_stored_event"] is True, dl)


def t_fakectl():
    env = dict(os.environ, FAKE_API_PORT_FILE=PORT_FILE)
    ctl_py = os.path.join(HERE, "fakectl.py")

    def run(*a, stdin=None):
        return subprocess.run([sys.executable, ctl_py] + list(a), env=env, input=stdin, capture_output=True, text=True, timeout=20)
    p = run("reset")
    check("fakectl reset", p.returncode == 0, p.stderr)
    p = run("seed", "-", stdin=json.dumps({"stripe": {"customers": [{"id": "cus_Q", "metadata": {"t": "a\\b\tc"}}]}}))
    check("fakectl seed -", p.returncode == 0, p.stderr)
    stripe("GET", "/v1/customers/cus_Q?expand[]=x%5Cy")
    p = run("requests", "--provider", "stripe", "--copy")
    lines = p.stdout.splitlines()
    ok = p.returncode == 0 and len(lines) == 1 and "\t" not in p.stdout
    if ok:
        obj = json.loads(lines[0].replace("\\\\", "\\"))
        ok = obj["query_params"] == {"expand[]": ["x\\y"]}
    check("fakectl requests --copy", ok, p.stdout[:300])
    p = run("fault", '{"provider":"stripe","action":"status","status":500}')
    check("fakectl fault", p.returncode == 0 and stripe("GET", "/v1/customers/cus_Q").status == 500, p.stderr)
    p = run("state", "--provider", "stripe")
    check("fakectl state", p.returncode == 0 and "cus_Q" in json.loads(p.stdout)["customers"], p.stderr)
    p = run("deliveries", "--copy")
    check("fakectl deliveries", p.returncode == 0 and p.stdout == "", p.stdout)
    p = run("fault", '{"action":"nope"}')
    check("fakectl error exit 1", p.returncode == 1 and "HTTP 400" in p.stderr, p.stderr)
    p = run("ping")
    check("fakectl ping", p.returncode == 0, p.stderr)


def main():
    global PORT, PORT_FILE, VERBOSE
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=os.path.join(SPECS, "stripe-spec3-extract.json"))
    ap.add_argument("--fixtures", default=os.path.join(SPECS, "stripe-fixtures3-extract.json"))
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    VERBOSE = args.verbose
    tmp = tempfile.mkdtemp(prefix="fakeapi-selftest-")
    PORT_FILE = os.path.join(tmp, "port")
    log = os.path.join(tmp, "fake.log")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_api.py"), "--port", "0", "--port-file", PORT_FILE,
                             "--stripe-spec", args.spec, "--stripe-fixtures", args.fixtures, "--log", log])
    try:
        deadline = time.time() + 15
        while not os.path.exists(PORT_FILE) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        check("server starts and writes port file", os.path.exists(PORT_FILE))
        if not os.path.exists(PORT_FILE):
            raise SystemExit(1)
        PORT = int(open(PORT_FILE).read())
        seed_all()
        for t in (t_shared, t_stripe_auth_and_lookup, t_stripe_search, t_stripe_update, t_stripe_idempotency,
                  t_stripe_events, t_stripe_spec, t_faults, t_cello, t_chargebee, t_cello_webhook, t_fakectl):
            try:
                t()
            except Exception:  # noqa: BLE001 - a crashing test group is one failure
                check(t.__name__ + " raised", False, traceback.format_exc())
        bugs = [r for r in ctl("GET", "requests") if r.get("fake_error")]
        check("no fake-internal errors", not bugs, [b["fake_error"] for b in bugs][:1])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "timeout"
            check("SIGTERM: clean exit", rc == 0, rc)
            check("SIGTERM: port file removed", not os.path.exists(PORT_FILE))
    print("fake selftest: %d passed, %d failed" % (PASSED, len(FAILED)))
    return 0 if not FAILED else 1


if __name__ == "__main__":
    sys.exit(main())
