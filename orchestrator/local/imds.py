"""An instance's metadata service (IMDSv2) on 127.0.0.1: a session token is required, as on EC2.

Serves the instance's id, type and zone, and the spot `instance-action` notice and rebalance
recommendation once they are set. The local cloud gives each instance its own; tests use it alone.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading


class Imds:
    def __init__(
        self, instance_id: str | None = None, instance_type: str | None = None, zone: str | None = None
    ) -> None:
        self.instance_action: dict | None = None
        self.rebalance: dict | None = None
        self.requests: list[str] = []
        self._token = secrets.token_hex(8)
        self._facts = {
            "/latest/meta-data/instance-id": instance_id,
            "/latest/meta-data/instance-type": instance_type,
            "/latest/meta-data/placement/availability-zone": zone,
        }
        imds = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: str = "") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_PUT(self):
                imds.requests.append(f"PUT {self.path}")
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(200, imds._token)
                return self._send(400)

            def do_GET(self):
                imds.requests.append(f"GET {self.path}")
                if self.headers.get("X-aws-ec2-metadata-token") != imds._token:
                    return self._send(401)
                if imds._facts.get(self.path):
                    return self._send(200, imds._facts[self.path])
                documents = {
                    "/latest/meta-data/spot/instance-action": imds.instance_action,
                    "/latest/meta-data/events/recommendations/rebalance": imds.rebalance,
                }
                document = documents.get(self.path)
                return self._send(200, json.dumps(document)) if document else self._send(404)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="imds", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
