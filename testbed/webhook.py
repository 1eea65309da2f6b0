"""A webhook receiver for tests: a threaded HTTP server on 127.0.0.1 that keeps every JSON body POSTed
to it, answering `status` (set it to 500 to play a receiver that is down, or `hang_s` to play one that
does not answer in time)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self, status: int = 200):
        self.status = status
        self.hang_s = 0.0
        self.received: list[tuple[str, dict]] = []  # (path, body), in arrival order
        self.refused = 0  # requests answered with a non-2xx status
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                status = receiver.status
                with receiver._lock:
                    if 200 <= status < 300:
                        receiver.received.append((self.path, json.loads(body)))
                    else:
                        receiver.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def bodies(self, path: str = "/hook") -> list[dict]:
        with self._lock:
            return [body for at, body in self.received if at == path]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
