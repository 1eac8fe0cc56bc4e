#!/usr/bin/env python3
"""A webhook receiver for the events tests: verifies X-UnMTA-Signature with
Python's own hmac (independent of the MTA's code), appends every event of a
good batch to OUT (one JSON object a line), answers 401 to a bad signature.

usage: receiver.py HOST PORT SECRET OUT [CERT KEY]   (CERT KEY: serve https)
"""
import hashlib
import hmac
import http.server
import json
import ssl
import sys
import time

HOST, PORT, SECRET, OUT = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]


def verify(header, body):
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t = fields.get("t", "")
    if not t.isdigit() or abs(time.time() - int(t)) > 300:
        return False
    mac = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, fields.get("v1", ""))


class Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not verify(self.headers.get("X-UnMTA-Signature", ""), body):
            with open(OUT + ".bad", "a") as bad:
                bad.write("bad signature\n")
            return self.answer(401)
        events = json.loads(body)
        with open(OUT, "a") as out:
            for event in events:
                out.write(json.dumps(event) + "\n")
        self.answer(200)

    def answer(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer((HOST, PORT), Hook)
if len(sys.argv) > 6:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[5], sys.argv[6])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
