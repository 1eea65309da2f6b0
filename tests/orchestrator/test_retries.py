"""botocore is the only retry layer, configured in orchestrator.aws.clients: a pool EC2 refuses is
asked once (InsufficientInstanceCapacity is HTTP 500, which botocore would otherwise retry), while
throttled reads are retried. Against a loopback EC2 that answers every call with an error."""

from __future__ import annotations

import http.server
import threading
from urllib.parse import parse_qs

import botocore.exceptions
import pytest

from orchestrator.aws.clients import Cloud, Endpoint, ErrorKind, classify

ANSWERS = {"RunInstances": (500, "InsufficientInstanceCapacity"), "DescribeInstances": (503, "RequestLimitExceeded")}


@pytest.fixture
def refusing_ec2():
    calls: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            action = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())["Action"][0]
            calls.append(action)
            status, code = ANSWERS[action]
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code><Message>{code} (test)</Message>'
                "</Error></Errors><RequestID>r-1</RequestID></Response>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Endpoint(f"http://127.0.0.1:{server.server_address[1]}", "test", "test"), calls
    server.shutdown()
    server.server_close()


def test_a_capacity_refusal_is_asked_once_then_left_to_the_next_offer(refusing_ec2):
    endpoint, calls = refusing_ec2
    cloud = Cloud("us-east-1", max_attempts=5, endpoint=endpoint)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        cloud.client("ec2", retries="once").run_instances(
            ImageId="ami-1", InstanceType="g5.xlarge", MinCount=1, MaxCount=1
        )
    assert classify(refused.value) is ErrorKind.CAPACITY
    assert calls == ["RunInstances"]


def test_throttled_reads_are_retried_by_botocore(refusing_ec2):
    endpoint, calls = refusing_ec2
    cloud = Cloud("us-east-1", max_attempts=2, endpoint=endpoint)  # two tries keep botocore's backoff short
    for retries in ("standard", "adaptive"):
        calls.clear()
        with pytest.raises(botocore.exceptions.ClientError) as throttled:
            cloud.client("ec2", retries=retries).describe_instances()
        assert classify(throttled.value) is ErrorKind.THROTTLE
        assert calls == ["DescribeInstances"] * 2
