"""An example route lookup in nginx's auth_http protocol, for deploy/compose/routing.yaml.

Every login of the users listed in MIGRATED goes to the new server, every other one to the
legacy server. It checks no password (the backend does); a real service would ask its user
database, and may refuse with "Auth-Status: <message>" and "Auth-Wait: <seconds>".
Standard library only: python3 authlookup.py [PORT].
"""

from __future__ import annotations

import http.server
import os
import sys
from urllib.parse import unquote

LEGACY = ("legacy-imap", "143")
NEW = ("new-imap", "143")
MIGRATED = set(os.environ.get("MIGRATED", "alice").split(","))


class Lookup(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        user = unquote(self.headers.get("Auth-User", ""))
        if self.headers.get("Auth-Protocol") != "imap" or not user:
            answer = {"Auth-Status": "Invalid login or password", "Auth-Wait": "3"}
        else:
            host, port = NEW if user in MIGRATED else LEGACY
            answer = {"Auth-Status": "OK", "Auth-Server": host, "Auth-Port": port}
        self.send_response(200)
        for name, value in answer.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    http.server.ThreadingHTTPServer(("0.0.0.0", port), Lookup).serve_forever()
