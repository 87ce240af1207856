"""A webhook receiver for keyplane's webhook tests (crates/keyplane/tests/it/webhooks.rs).

It verifies every delivery with the `standardwebhooks` package (the Standard Webhooks
reference implementation for Python, independent of keyplane's code) and records it. The test
drives it over HTTP on 127.0.0.1:

  POST /_control  {"secrets": ["whsec_..."], "status": 204, "location": null}
      which secrets to verify with (each on its own), and what to answer deliveries with
      (e.g. 503 while "down", or 302 with a Location to check that redirects are not followed)
  GET  /_control  every request received so far, oldest first:
      {"id", "timestamp", "signature", "type", "body", "path", "verified_with": [indexes of the
       secrets that verified it], "error"}

Any other POST is a delivery. The port is printed on the first line of standard output.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

lock = threading.Lock()
state = {"secrets": [], "status": 204, "location": None}
received = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path != "/_control":
            return self._answer(404)
        with lock:
            out = json.dumps(received).encode()
        self._answer(200, out, {"Content-Type": "application/json"})

    def do_POST(self):
        body = self._body()
        if self.path == "/_control":
            with lock:
                state.update(json.loads(body or b"{}"))
            return self._answer(204)
        headers = {k: v for k, v in self.headers.items()}
        with lock:
            secrets = list(state["secrets"])
            status = state["status"]
            location = state["location"]
        verified_with, error, payload = [], None, None
        for i, secret in enumerate(secrets):
            try:
                payload = Webhook(secret).verify(body, headers)
                verified_with.append(i)
            except WebhookVerificationError as e:
                error = str(e)
            except Exception as e:  # a malformed header is a failed verification too
                error = repr(e)
        record = {
            "id": self.headers.get("webhook-id"),
            "timestamp": self.headers.get("webhook-timestamp"),
            "signature": self.headers.get("webhook-signature"),
            "type": (payload or {}).get("type"),
            "body": body.decode(errors="replace"),
            "path": self.path,
            "verified_with": verified_with,
            "error": None if verified_with else error,
            "answered": status,
        }
        with lock:
            received.append(record)
        self._answer(status, b"", {"Location": location} if location else None)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
