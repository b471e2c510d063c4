#!/usr/bin/python3
"""fakectl: tiny client for the fake_api control API, for psql `\\!`,
`\\copy ... from program` and shell scripts.

Finds the server via --url, --port-file, $FAKE_API_URL or $FAKE_API_PORT_FILE.

  fakectl.py reset
  fakectl.py seed FILE|-                 JSON seed (see README.md)
  fakectl.py fault JSON                  e.g. '{"provider":"stripe","action":"rate_limit","retry_after":1}'
  fakectl.py clear-faults
  fakectl.py requests [--provider P] [--since N] [--copy]
  fakectl.py state [--provider P] [--copy]
  fakectl.py deliveries [--copy]
  fakectl.py expire-cello-tokens [--refresh]
  fakectl.py ping [--wait SECONDS]       exit 0 once the server answers

--copy prints one compact JSON object per line, escaped for PostgreSQL COPY
text format, e.g.  \\copy t(j) from program 'test/fake/fakectl.py requests --copy'
Exit status: 0 on success, 1 on an HTTP or connection error (message on stderr).
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def base_url(args):
    if args.url:
        return args.url.rstrip("/")
    port_file = args.port_file or os.environ.get("FAKE_API_PORT_FILE")
    if port_file:
        with open(port_file) as f:
            return "http://127.0.0.1:%d" % int(f.read().strip())
    if os.environ.get("FAKE_API_URL"):
        return os.environ["FAKE_API_URL"].rstrip("/")
    sys.exit("fakectl: no server: give --url/--port-file or set FAKE_API_PORT_FILE/FAKE_API_URL")


def call(base, method, path, body=None, query=None):
    url = base + path
    if query:
        url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read().decode("utf-8"))


def copy_line(obj):
    # json.dumps escapes tabs/newlines inside strings; COPY text format also
    # needs every backslash doubled.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("\\", "\\\\")


def emit(obj, as_copy):
    if as_copy:
        items = obj if isinstance(obj, list) else [obj]
        sys.stdout.write("".join(copy_line(o) + "\n" for o in items))
    else:
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="fakectl.py", description="control the fake_api test server")
    ap.add_argument("--url")
    ap.add_argument("--port-file")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("reset")
    p = sub.add_parser("seed")
    p.add_argument("file", help="JSON file, or - for stdin")
    p = sub.add_parser("fault")
    p.add_argument("json")
    sub.add_parser("clear-faults")
    sub.add_parser("faults")
    p = sub.add_parser("requests")
    p.add_argument("--provider")
    p.add_argument("--since", type=int)
    p.add_argument("--copy", action="store_true")
    p = sub.add_parser("state")
    p.add_argument("--provider")
    p.add_argument("--copy", action="store_true")
    p = sub.add_parser("deliveries")
    p.add_argument("--copy", action="store_true")
    p = sub.add_parser("expire-cello-tokens")
    p.add_argument("--refresh", action="store_true", help="expire refresh tokens too")
    p = sub.add_parser("ping")
    p.add_argument("--wait", type=float, default=0)
    args = ap.parse_args(argv)

    if args.cmd == "ping":
        deadline = time.time() + args.wait
        while True:
            try:
                call(base_url(args), "GET", "/_control/health")
                return 0
            except (OSError, ValueError, SystemExit):
                if time.time() >= deadline:
                    print("fakectl: server not answering", file=sys.stderr)
                    return 1
                time.sleep(0.1)

    base = base_url(args)
    try:
        if args.cmd == "reset":
            emit(call(base, "POST", "/_control/reset"), False)
        elif args.cmd == "seed":
            raw = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
            json.loads(raw)   # fail early, locally, on bad JSON
            emit(call(base, "POST", "/_control/seed", raw), False)
        elif args.cmd == "fault":
            emit(call(base, "POST", "/_control/fault", json.loads(args.json)), False)
        elif args.cmd == "clear-faults":
            emit(call(base, "POST", "/_control/faults/clear"), False)
        elif args.cmd == "faults":
            emit(call(base, "GET", "/_control/faults"), False)
        elif args.cmd == "requests":
            emit(call(base, "GET", "/_control/requests", query={"provider": args.provider, "since": args.since}), args.copy)
        elif args.cmd == "state":
            emit(call(base, "GET", "/_control/state", query={"provider": args.provider}), args.copy)
        elif args.cmd == "deliveries":
            emit(call(base, "GET", "/_control/deliveries"), args.copy)
        elif args.cmd == "expire-cello-tokens":
            emit(call(base, "POST", "/_control/cello/expire", {"access": True, "refresh": args.refresh}), False)
    except urllib.error.HTTPError as e:
        print("fakectl: HTTP %d: %s" % (e.code, e.read().decode("utf-8", "replace")), file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print("fakectl: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
