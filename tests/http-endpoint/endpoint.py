#!/usr/bin/env python3
"""An HTTP(S) endpoint for the end-to-end tests: it receives what an HTTP upstream POSTs,
writes one JSON line per request to a log, and answers as a script file tells it.

Python 3 standard library only. HTTP/1.1 with keep-alive, one thread per connection, on
127.0.0.1. tests/src/lib.rs (`Endpoint`) starts it; by hand:

    python3 endpoint.py --port 0 --log /tmp/requests.jsonl --script /tmp/script.json
    curl -d '[{"id":"a"}]' http://127.0.0.1:PORT/events

Options:
    --port N          0 for a free port (the OS picks one); a port that is taken exits 98
    --port-file F     written (atomically) with the port once the server listens
    --log F           one JSON line appended per request (see below)
    --script F        the script, read again at every request (absent or empty: answer 200)
    --cert/--key F    serve TLS with this certificate chain and key
    --client-ca F     with TLS: require a client certificate that chains to this CA
    --lean            log no headers and no body, only the event ids (for the bench)

The script, a JSON object; every key is optional:
    "token":       "abc"  requests without `Authorization: Bearer abc` get 401
    "respond":     [{"status": 503, "retry_after": "2"}, {"hang": true}, {"close": true}, ...]
                   answers for the next requests, one each, in order; then the default.
                   An entry may also give "body" (text), and "retry_after_date": N for a
                   Retry-After that is an HTTP-date N s after the next whole second (logged
                   as "retry_until", Unix seconds). {"hang": true}: read the request,
                   log it as "hung" and never answer (until the client goes away);
                   {"close": true}: close the connection without an answer. The list is
                   consumed per script content: writing a different script starts it anew.
    "hang":        true   every request hangs as above
    "reject_ids":  [...]  a batch holding an event with one of these ids gets "reject_status"
    "reject_codes": [...] the same for events whose body.code is one of these
    "reject_status": 400  (default 400)
    "status":      200    the default answer (default 200)

Each log line: {"time": when the request was read (Unix seconds, float), "answered": when
the answer was sent (absent when hung or closed), "conn": the connection's number,
"method", "path", "headers": {lower-cased name: value}, "body": the parsed JSON (null if it
is not JSON; then "body_error" says why, and the answer is 400), "ids": the ids of the
events in the body, "client_cert": the client certificate's subject CN (TLS with
--client-ca), "status": the status answered, or "hung" / "closed"}. A line is written
whole and flushed before the answer goes out, so a client that got an answer finds its
request in the log.
"""

import argparse
import email.utils
import errno
import http.server
import itertools
import json
import math
import os
import ssl
import sys
import threading
import time


class State:
    """What the handler threads share: the log, the script and how far "respond" got."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        self.script_text = None
        self.consumed = 0
        self.conns = itertools.count(1)

    def script(self):
        """The script as it is now: (its text, the parsed object)."""
        text = ""
        if self.args.script:
            try:
                with open(self.args.script, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                text = ""
        try:
            script = json.loads(text) if text.strip() else {}
        except ValueError:
            # Half written by hand: the tests replace the file atomically.
            script = {}
        return text, script

    def next_entry(self, text, script):
        """The next "respond" entry of this script, or None once they are used up."""
        with self.lock:
            if text != self.script_text:
                self.script_text = text
                self.consumed = 0
            respond = script.get("respond") or []
            if self.consumed < len(respond):
                self.consumed += 1
                return respond[self.consumed - 1]
        return None

    def write(self, record):
        if self.log is None:
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.lock:
            self.log.write(line)
            self.log.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edge-test-endpoint/1"
    # Headers and bodies go out in one write each; Nagle would delay the body.
    disable_nagle_algorithm = True

    def setup(self):
        self.conn_id = next(self.server.state.conns)
        if isinstance(self.request, ssl.SSLSocket):
            # In this connection's thread, so a slow or failing client holds up no other.
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.answer({"time": time.time(), "method": "GET", "path": self.path}, 405, {})

    def do_POST(self):
        state = self.server.state
        record = {"time": None, "conn": self.conn_id, "method": "POST", "path": self.path}
        body_bytes = self.read_body()
        record["time"] = time.time()
        if body_bytes is None:
            return
        if not state.args.lean:
            record["headers"] = {k.lower(): v for k, v in self.headers.items()}
        else:
            record["headers"] = {
                k: self.headers[k]
                for k in ("idempotency-key", "content-type")
                if self.headers.get(k) is not None
            }
        cert = self.client_cn()
        if cert is not None:
            record["client_cert"] = cert
        body = None
        try:
            body = json.loads(body_bytes)
        except ValueError as e:
            record["body_error"] = str(e)
        events = body if isinstance(body, list) else []
        record["ids"] = [e.get("id") if isinstance(e, dict) else None for e in events]
        if not state.args.lean:
            record["body"] = body

        text, script = state.script()
        token = script.get("token")
        extra = {}
        if "body_error" in record:
            status = 400
        elif token is not None and self.headers.get("Authorization") != f"Bearer {token}":
            status = 401
        elif (entry := state.next_entry(text, script)) is not None:
            if entry.get("hang"):
                return self.hang(record)
            if entry.get("close"):
                record["status"] = "closed"
                state.write(record)
                self.close_connection = True
                return
            status = int(entry.get("status", 200))
            if entry.get("retry_after") is not None:
                extra["Retry-After"] = str(entry["retry_after"])
            if entry.get("retry_after_date") is not None:
                until = math.ceil(time.time()) + int(entry["retry_after_date"])
                extra["Retry-After"] = email.utils.formatdate(until, usegmt=True)
                record["retry_until"] = until
            if entry.get("body") is not None:
                extra["body"] = entry["body"]
        elif script.get("hang"):
            return self.hang(record)
        elif self.rejected(script, events):
            status = int(script.get("reject_status", 400))
        else:
            status = int(script.get("status", 200))
        self.answer(record, status, extra)

    def rejected(self, script, events):
        ids = set(script.get("reject_ids") or [])
        codes = set(script.get("reject_codes") or [])
        for e in events:
            if not isinstance(e, dict):
                continue
            # A CloudEvent carries the event in data.
            inner = e.get("data") if "specversion" in e else e
            inner = inner if isinstance(inner, dict) else {}
            if e.get("id") in ids or inner.get("id") in ids:
                return True
            body = inner.get("body")
            if isinstance(body, dict) and body.get("code") in codes:
                return True
        return False

    def read_body(self):
        """The request body (Content-Length or chunked), or None when it cannot be read."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    return None
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        return data if len(data) == length else None

    def client_cn(self):
        if not isinstance(self.connection, ssl.SSLSocket):
            return None
        peer = self.connection.getpeercert()
        if not peer:
            return None
        for rdn in peer.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return ""

    def hang(self, record):
        """Logs the request and never answers: waits until the client goes away."""
        record["status"] = "hung"
        self.server.state.write(record)
        self.close_connection = True
        try:
            self.connection.settimeout(None)
            while self.connection.recv(4096):
                pass
        except OSError:
            pass

    def answer(self, record, status, extra):
        body = extra.pop("body", None)
        if body is None:
            body = json.dumps({"received": len(record.get("ids") or [])})
        data = body.encode("utf-8")
        record["status"] = status
        record["answered"] = time.time()
        self.server.state.write(record)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that went away or failed the TLS handshake: one line on stderr.
        err = sys.exc_info()[1]
        print(f"endpoint: {client_address}: {type(err).__name__}: {err}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--log")
    p.add_argument("--script")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--client-ca")
    p.add_argument("--lean", action="store_true")
    args = p.parse_args()
    if bool(args.cert) != bool(args.key):
        p.error("--cert and --key go together")
    if args.client_ca and not args.cert:
        p.error("--client-ca needs --cert and --key")

    try:
        server = Server(("127.0.0.1", args.port), Handler)
    except OSError as e:
        print(f"endpoint: cannot listen on 127.0.0.1:{args.port}: {e}", file=sys.stderr)
        sys.exit(98 if e.errno == errno.EADDRINUSE else 1)
    server.state = State(args)
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        # The handshake runs in the connection's thread (on its first read), not in accept.
        server.socket = ctx.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    port = server.server_address[1]
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
