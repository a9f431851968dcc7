"""The upstream of benches/bypass.sh: answers 200 with the request line, path and headers it
received, as JSON, so that review.py can tell what a spelling became on the way."""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_ANY(self):
        body = json.dumps({"line": self.requestline, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
for m in ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "LOGIN"]:
    setattr(H, "do_" + m, H.do_ANY)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
