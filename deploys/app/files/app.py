#!/usr/bin/python3
"""The sample app: a tiny HTTP service (standard library only).

GET /         -> JSON {"service": "app", "message": ..., "host": <hostname>}
GET /healthz  -> "ok"
GET /private  -> 200 {"private": "ok"} with the configured X-Token header, 401 without it,
                 503 when no token is configured
Configuration: a JSON file {"port": int, "message": str, "token": str | null} given as the
only argument.
"""

import hmac
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

with open(sys.argv[1], encoding="utf-8") as f:
    CONFIG = json.load(f)


class Handler(BaseHTTPRequestHandler):
    server_version = "gitops-sample-app/1"

    def _send(self, status, body, content_type):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, "ok\n", "text/plain; charset=utf-8")
        elif path == "/private":
            token = CONFIG.get("token")
            given = self.headers.get("X-Token", "")
            if not token:
                self._send(503, "no token configured\n", "text/plain; charset=utf-8")
            elif hmac.compare_digest(given.encode(), token.encode()):
                self._send(200, json.dumps({"private": "ok"}) + "\n", "application/json")
            else:
                self._send(401, "X-Token required\n", "text/plain; charset=utf-8")
        elif path == "/":
            body = {"service": "app", "message": CONFIG["message"], "host": socket.gethostname()}
            self._send(200, json.dumps(body) + "\n", "application/json")
        else:
            self._send(404, "not found\n", "text/plain; charset=utf-8")

    def log_message(self, format, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(CONFIG["port"])), Handler)
    server.daemon_threads = True
    server.serve_forever()
