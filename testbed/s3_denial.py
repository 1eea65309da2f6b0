"""A loopback HTTP proxy in front of an S3 endpoint (the moto server) that answers reads as real S3
answers a principal whose s3:ListBucket holds only under an `s3:prefix` condition (the trainer role,
the operator): a GET or HEAD of a missing key is 403 AccessDenied, never 404 NoSuchKey. moto answers
404 to everyone. It can also refuse chosen keys and listings outright, as a policy would.

Everything else passes through unchanged, headers (signatures included) and bodies alike. Tests use
it through conftest's `s3_denies_missing_keys` fixture; the strict local cloud will take its place.
"""

from __future__ import annotations

import http.client
import threading
from urllib.parse import parse_qs, unquote, urlsplit

from werkzeug.serving import make_server

from orchestrator.local.daemon import free_port

ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)
# Hop-by-hop headers, and the ones the proxy sets itself when it forwards a body whole.
NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


class S3DenialProxy:
    """`endpoint` answers like `upstream`, except that reads of missing keys (and of `denied_keys`) are
    403, and listings under `denied_prefixes` too. `denials` records each (method, "bucket/key") it refused."""

    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self._upstream = (target.hostname, target.port)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.denied_keys: set[str] = set()  # "bucket/key": GET and HEAD refused, present or not
        self.denied_prefixes: set[str] = set()  # "bucket/prefix": ListObjects(V2) under it refused
        self.denials: list[tuple[str, str]] = []
        self._server = make_server("127.0.0.1", self.port, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> S3DenialProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()

    def _app(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        raw = environ.get("REQUEST_URI") or environ.get("RAW_URI") or environ["PATH_INFO"]
        path, _, query = raw.partition("?")
        bucket, _, key = unquote(path).lstrip("/").partition("/")
        reading = method in ("GET", "HEAD")
        if reading and key and f"{bucket}/{key}" in self.denied_keys:
            return self._deny(method, f"{bucket}/{key}", start_response)
        if reading and bucket and not key:
            prefix = parse_qs(query).get("prefix", [""])[0]
            if any(f"{bucket}/{prefix}".startswith(denied) for denied in self.denied_prefixes):
                return self._deny(method, f"{bucket}/{prefix}", start_response)
        status, reason, headers, body = self._forward(environ, method, raw)
        missing = status == 404 and (method == "HEAD" or b"<Code>NoSuchKey</Code>" in body)
        if reading and key and missing:
            return self._deny(method, f"{bucket}/{key}", start_response)
        start_response(f"{status} {reason}", headers)
        return [body]

    def _deny(self, method: str, what: str, start_response):
        self.denials.append((method, what))
        body = b"" if method == "HEAD" else ACCESS_DENIED
        start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def _forward(self, environ, method: str, raw: str):
        headers = {
            name[5:].replace("_", "-").title(): value for name, value in environ.items() if name.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers = {name: value for name, value in headers.items() if name.lower() not in NOT_FORWARDED}
        stream = environ["wsgi.input"]
        if environ.get("wsgi.input_terminated"):  # chunked: werkzeug takes the framing off
            body = stream.read()
        else:  # the raw socket: exactly Content-Length bytes, or it waits for more
            body = stream.read(int(environ.get("CONTENT_LENGTH") or 0))
        connection = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            connection.request(method, raw, body=body or None, headers=headers)
            response = connection.getresponse()
            content = response.read()
            kept = [(name, value) for name, value in response.getheaders() if name.lower() not in NOT_FORWARDED]
            kept.append(("Content-Length", response.getheader("Content-Length") or str(len(content))))
            return response.status, response.reason, kept, content
        finally:
            connection.close()
