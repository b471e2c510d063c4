#!/usr/bin/python3
"""fake_api: local fake of the Stripe, Chargebee and Cello APIs for the
celloattr test suite (no network in tests: everything is on 127.0.0.1).

  python3 test/fake/fake_api.py --port 0 --port-file PATH \
      --stripe-spec test/specs/stripe-spec3-extract.json \
      --stripe-fixtures test/specs/stripe-fixtures3-extract.json [--log FILE]

URL layout on the one port:
  /stripe/v1/...               Stripe        /chargebee/api/v2/...   Chargebee
  /cello/...                   Cello API     /cello-webhook/chargebee  Cello's Chargebee webhook
  /_control/...                control API (see README.md, fakectl.py)
Exits cleanly (status 0) on SIGTERM or SIGINT.
"""
import argparse
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakeapi.server import App, Server  # noqa: E402


def write_port_file(path, port):
    # temp file + rename: a reader never sees a partial file
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    ap.add_argument("--port-file", help="write the chosen port number here")
    ap.add_argument("--stripe-spec", required=True)
    ap.add_argument("--stripe-fixtures", required=True)
    ap.add_argument("--log", help="append a line per request (and fake errors) to this file")
    args = ap.parse_args(argv)

    log = open(args.log, "a", encoding="utf-8") if args.log else None
    app = App(args.stripe_spec, args.stripe_fixtures, log=log)
    server = Server(("127.0.0.1", args.port), app)
    port = server.server_address[1]

    def on_signal(signum, frame):
        # shutdown() blocks until serve_forever() returns, so it must run in
        # another thread than the one serving (this one).
        app.stopping.set()          # also wakes requests stalled by faults
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.port_file:
        write_port_file(args.port_file, port)
    app.log("listening on 127.0.0.1:%d" % port)
    server.serve_forever(poll_interval=0.1)
    app.log("stopping")
    server.server_close()
    if args.port_file:
        try:
            with open(args.port_file) as f:
                if f.read().strip() == str(port):
                    os.unlink(args.port_file)
        except OSError:
            pass
    if log:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
