"""The strict local cloud: an HTTP proxy in front of the moto server that answers the way AWS does
where moto is kinder. Every client (spotctl, the trainer, the tests) talks to the proxy; requests
it has no rule for pass through to moto unchanged.

What it adds, each as AWS documents it (sources: the S3 API reference, GetObject/HeadObject
"Permissions"; the EC2 API reference's error codes, "Request throttling" and "Eventual consistency";
the EC2 user guide's "Service-linked role for Spot Instance requests" and "Spot Instance quotas";
the IAM user guide on eventual consistency; the EC2 API reference's StateReason):

- S3: a GET or HEAD of a missing key is **403 AccessDenied**, not 404, for a principal without an
  unconditioned s3:ListBucket (spotctl's roles: theirs is conditioned on s3:prefix).
- EC2 RunInstances:
  * refused pools answer `InsufficientInstanceCapacity` with **HTTP 500** (botocore retries it);
  * Spot vCPU quotas per bucket (orchestrator.aws.quotas): `MaxSpotInstanceCountExceeded`;
  * a request-rate bucket (5 calls, refilled 2/s, as EC2's RunInstances bucket): **503**
    `RequestLimitExceeded`; describe calls have EC2's non-mutating bucket (100, 20/s);
  * `AuthFailure.ServiceLinkedRoleCreationNotPermitted` until `AWSServiceRoleForEC2Spot` exists;
  * `InvalidParameterValue ... Invalid IAM Instance Profile name` for a profile that does not
    exist or is younger than its propagation delay;
  * ClientToken idempotency: a repeated token returns the first call's instances, a repeated
    token with other parameters is `IdempotentParameterMismatch` (moto starts a second instance);
  * chosen pools start instances that die in `pending -> terminated` with a launch-failure
    state reason (`Client.InternalError`, `Server.InsufficientInstanceCapacity`).
- EC2 eventual consistency: for `consistency_s` after RunInstances, a new instance is
  `InvalidInstanceID.NotFound` when named by id, and missing from filtered DescribeInstances.
- IAM: CreateServiceLinkedRole for spot.amazonaws.com makes AWS's `AWSServiceRoleForEC2Spot`, and a
  second one is AWS's `InvalidInput ... has been taken` (moto names it differently and says
  EntityAlreadyExists).
- Service Quotas: GetServiceQuota for the EC2 Spot quotas answers the configured values (moto
  knows only VPC quotas).
- EC2 placement groups, which moto lacks: Create/Describe/DeletePlacementGroup and RunInstances'
  `Placement.GroupName` checked as AWS does (orchestrator.local.placement_groups).
- EventBridge PutEvents: an entry whose Source starts with `aws.` (AWS's own services' events, e.g.
  EC2's `aws.ec2`) fails alone with `NotAuthorizedForSourceException` "Not authorized for the source."
  (counted in FailedEntryCount; the other entries go to moto). moto accepts any source, so a client
  could otherwise forge EC2's events to the controller's rules. The local cloud's own publisher
  (orchestrator.local.eventbus) plays AWS and publishes to moto directly, past this proxy.

`Strictness` is the configuration; `POST /_strict/config` changes it on a running proxy (JSON of
its fields), `GET /_strict/config` and `GET /_strict/calls` (calls per action, with the answer) read
it, and moto's own `POST /moto-api/reset` also forgets the proxy's state.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import http.client
import http.server
import json
import logging
import re
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs, unquote, urlsplit

from orchestrator.aws import quotas
from orchestrator.aws.instances import SPOT_SERVICE, SPOT_SERVICE_LINKED_ROLE
from orchestrator.local.placement_groups import PLACEMENT_ACTIONS, PlacementGroups

log = logging.getLogger(__name__)

PROXY_ACCESS_KEY = "strict-proxy"  # the proxy's own questions to moto sign with this (not the client's calls)
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
AWS_SOURCE_PREFIX = "aws."  # EventBridge reserves these event sources for AWS's services
# EC2's documented request-rate buckets (ec2/latest/devguide/ec2-api-throttling.html): size, refill/s.
RUN_INSTANCES_BUCKET = (5, 2.0)
NON_MUTATING_BUCKET = (100, 20.0)
MUTATING_BUCKET = (200, 10.0)
LAUNCH_FAILURES = {
    "Client.InternalError": "Client.InternalError: Client error on launch",
    "Server.InsufficientInstanceCapacity": "Server.InsufficientInstanceCapacity: Insufficient capacity to satisfy launch request",
    "Client.VolumeLimitExceeded": "Client.VolumeLimitExceeded: Volume limit exceeded",
}


@dataclass
class Strictness:
    """What the strict local cloud refuses, and how; every field can be changed while it runs."""

    missing_keys_denied: bool = True  # S3 GET/HEAD of a missing key: 403 (True) or moto's 404
    denied_keys: list[str] = field(default_factory=list)  # "bucket/key" GET/HEAD refused although it exists
    denied_listings: list[str] = field(default_factory=list)  # "bucket/prefix": listings under it refused
    refused_pools: list[str] = field(default_factory=list)  # "type/zone" (or "type/*") without spot capacity
    spot_vcpu_quotas: dict[str, int] = field(default_factory=dict)  # quota code -> vCPUs; absent: default_quota
    default_quota: int = 1024  # vCPUs of a bucket not named above (an account that has used Spot a while)
    throttle: bool = True  # EC2's request-rate buckets
    throttled_run_instances: int = 0  # the next N RunInstances are throttled (a bucket other callers emptied)
    spot_role_required: bool = True  # RunInstances for spot refused until AWSServiceRoleForEC2Spot exists
    profile_propagation_s: float = 0.0  # an instance profile younger than this is "invalid"
    consistency_s: float = 1.0  # a new instance is invisible for this long
    launch_failures: dict[str, str] = field(default_factory=dict)  # "type/zone" -> state reason code
    launch_failure_after_s: float = 0.5  # pending -> terminated this long after RunInstances

    def update(self, changes: dict) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown strictness settings: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            setattr(self, name, value)

    def quota(self, code: str) -> int:
        return int(self.spot_vcpu_quotas.get(code, self.default_quota))


class _Bucket:
    """A token bucket: `size` calls at once, refilled at `rate` per second."""

    def __init__(self, size: int, rate: float):
        self.size, self.rate, self.tokens, self.at = size, rate, float(size), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def ec2_error(status: int, code: str, message: str) -> Answer:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{_escape(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    return Answer(status, [("Content-Type", "text/xml;charset=UTF-8")], body)


def query_error(status: int, code: str, message: str, kind: str = "Sender") -> Answer:
    """The error of an AWS Query protocol service (IAM)."""
    body = (
        f'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>{kind}</Type>'
        f"<Code>{code}</Code><Message>{_escape(message)}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    ).encode()
    return Answer(status, [("Content-Type", "text/xml")], body)


def s3_denied() -> Answer:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message>'
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()
    return Answer(403, [("Content-Type", "application/xml")], body)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


class StrictProxy:
    """The proxy: `endpoint` is what clients use; `upstream` is the moto server behind it."""

    def __init__(self, upstream: str, strictness: Strictness | None = None, host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self.strictness = strictness or Strictness()
        self._defaults = copy.deepcopy(self.strictness)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._reset_state()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: botocore and s3fs reuse connections
            # Headers and body go out as two writes: with Nagle's algorithm and the client's delayed ACK
            # each answer would wait ~40 ms for nothing (48 ms a request instead of 5).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> StrictProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="strict-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self, strictness: Strictness | None = None) -> None:
        """Forget launched instances, tokens, buckets and counts; back to `strictness` (or the defaults)."""
        with self._lock:
            self.strictness = copy.deepcopy(strictness or self._defaults)  # its lists are changed in place
            self._reset_state()

    def wait_consistent(self) -> None:
        """Block until every instance started so far is visible (tests that read EC2 directly)."""
        with self._lock:
            last = max(self._young.values(), default=0.0)
        time.sleep(max(0.0, last - time.monotonic()))

    def _reset_state(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.denials: list[tuple[str, str]] = []  # (method, "bucket/key") S3 answered 403 for
        self.busy_s = 0.0  # time spent answering requests: "the API calls", for benchmarks
        self._young: dict[str, float] = {}  # instance id -> when it becomes visible
        self._tokens: dict[str, tuple[dict, Answer]] = {}  # ClientToken -> (parameters, answer)
        self._buckets = {
            "run": _Bucket(*RUN_INSTANCES_BUCKET),
            "describe": _Bucket(*NON_MUTATING_BUCKET),
            "mutate": _Bucket(*MUTATING_BUCKET),
        }
        self._spot_role_seen = False
        self._vcpus: dict[str, int] = {}
        self._cluster_ok: dict[str, bool] = {}
        self.placement_groups = PlacementGroups(self._not_terminated)

    # ------------------------------------------------------------------ the request path
    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        started = time.perf_counter()
        body = _read_body(handler)
        path = handler.path
        try:
            if path.startswith("/_strict/"):
                answer = self._control(handler.command, path, body)
            else:
                scope = _SCOPE.search(handler.headers.get("Authorization", ""))
                region, service = scope.groups() if scope else ("", "")
                answer = self._rules(handler, service, region, body)
                if answer is None:
                    answer = self._forward(handler.command, path, handler.headers, body)
                    answer = self._after(handler, service, region, body, answer)
                if path.startswith("/moto-api/reset") and handler.command == "POST":
                    self.reset()
        except Exception as exc:  # the proxy must answer something: a 500 the client will report
            log.exception("strict proxy: %s %s failed", handler.command, path)
            answer = Answer(500, [("Content-Type", "text/plain")], f"strict proxy error: {exc}".encode())
        _reply(handler, answer)
        with self._lock:
            self.busy_s += time.perf_counter() - started

    def _forward(self, method: str, path: str, headers, body: bytes) -> Answer:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            parts = urlsplit(self.upstream)
            connection = self._local.connection = _Upstream(parts.hostname, parts.port, timeout=120)
        sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        sent["Content-Length"] = str(len(body))
        for attempt in (1, 2):  # a kept-alive connection moto closed meanwhile: once more on a new one
            try:
                connection.request(method, path, body=body, headers=sent)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                if attempt == 2:
                    raise
        # A HEAD answer's Content-Length is the object's size, not of a body: it is kept as moto gave it.
        dropped = _HOP_BY_HOP - {"content-length"} if method == "HEAD" else _HOP_BY_HOP
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in dropped]
        return Answer(response.status, kept, data)

    # ------------------------------------------------------------------ control API
    def _control(self, method: str, path: str, body: bytes) -> Answer:
        with self._lock:
            if path == "/_strict/config" and method == "POST":
                try:
                    self.strictness.update(json.loads(body or b"{}"))
                except (ValueError, TypeError) as exc:
                    return _json(400, {"error": str(exc)})
            elif path == "/_strict/reset" and method == "POST":
                self.reset()
            elif path == "/_strict/calls":
                return _json(200, dict(self.calls))
            elif path != "/_strict/config":
                return _json(404, {"error": f"no {path}"})
            return _json(200, dataclasses.asdict(self.strictness))

    # ------------------------------------------------------------------ rules before moto
    def _rules(self, handler, service: str, region: str, body: bytes) -> Answer | None:
        if service == "ec2":
            return self._ec2_before(_form(body), region)
        if service == "iam":
            return self._iam_before(_form(body))
        if service == "servicequotas":
            return self._service_quotas(handler.headers.get("X-Amz-Target", ""), body, region)
        if service == "events" and handler.headers.get("X-Amz-Target", "").endswith(".PutEvents"):
            return self._put_events(handler, body)
        if service == "s3" and handler.command in ("GET", "HEAD"):
            return self._s3_refused(handler)
        return None

    def _s3_refused(self, handler) -> Answer | None:
        """A refusal the principal's policy would give: a key it may not read, a prefix it may not list."""
        url = urlsplit(handler.path)
        bucket, _, key = url.path.lstrip("/").partition("/")
        key = unquote(key)
        if key and f"{bucket}/{key}" in self.strictness.denied_keys:
            return self._denied(handler.command, f"{bucket}/{key}")
        prefix = parse_qs(url.query).get("prefix", [""])[0]
        if not key and any(f"{bucket}/{prefix}".startswith(d) for d in self.strictness.denied_listings):
            return self._denied(handler.command, f"{bucket}/{prefix}")
        return None

    def _denied(self, method: str, what: str) -> Answer:
        with self._lock:
            self.denials.append((method, what))
        return s3_denied()

    def _ec2_before(self, params: dict[str, str], region: str) -> Answer | None:
        action = params.get("Action", "")
        strict = self.strictness
        with self._lock:
            bucket = "run" if action == "RunInstances" else "describe" if action.startswith("Describe") else "mutate"
            emptied = action == "RunInstances" and strict.throttled_run_instances > 0
            if emptied:
                strict.throttled_run_instances -= 1
            if emptied or (strict.throttle and not self._buckets[bucket].take()):
                self.calls[f"ec2:{action}:RequestLimitExceeded"] += 1
                return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")
            young = [i for i in _instance_ids(params) if self._young.get(i, 0) > time.monotonic()]
        if young:
            self.calls[f"ec2:{action}:InvalidInstanceID.NotFound"] += 1
            return ec2_error(400, "InvalidInstanceID.NotFound", f"The instance ID '{young[0]}' does not exist")
        if action in PLACEMENT_ACTIONS:
            self.calls[f"ec2:{action}"] += 1
            status, body = self.placement_groups.answer(action, params, region)
            return Answer(status, [("Content-Type", "text/xml;charset=UTF-8")], body)
        if action != "RunInstances":
            return None
        token = params.get("ClientToken")
        with self._lock:
            memo = self._tokens.get(token) if token and params.get("DryRun") != "true" else None
        if memo is not None:
            if _significant(memo[0]) != _significant(params):
                self.calls["ec2:RunInstances:IdempotentParameterMismatch"] += 1
                return ec2_error(
                    400,
                    "IdempotentParameterMismatch",
                    f"Arguments on this idempotent request are inconsistent with arguments used in previous request(s) (token {token}).",
                )
            self.calls["ec2:RunInstances:repeated"] += 1
            return memo[1]  # the instances the first call started
        refusal = self._run_instances_refusal(params, region)
        self.calls[f"ec2:RunInstances:{refusal[1] if refusal else 'sent'}"] += 1
        return ec2_error(*refusal) if refusal else None

    def _run_instances_refusal(self, params: dict[str, str], region: str) -> tuple[int, str, str] | None:
        """(status, code, message) of EC2's refusal of this RunInstances, or None to let moto start it."""
        if params.get("DryRun") == "true":
            return None
        strict = self.strictness
        instance_type = params.get("InstanceType", "m1.small")
        zone = self._zone_of(params, region)
        spot = params.get("InstanceMarketOptions.MarketType") == "spot"
        if spot and strict.spot_role_required and not self._spot_role_exists(region):
            return (
                403,
                "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
                "The provided credentials do not have permission to create the service-linked role for EC2 Spot Instances.",
            )
        profile = params.get("IamInstanceProfile.Name") or params.get("IamInstanceProfile.Arn")
        if profile and not self._profile_usable(profile, region):
            which = "name" if params.get("IamInstanceProfile.Name") else "arn"
            return (
                400,
                "InvalidParameterValue",
                f"Value ({profile}) for parameter iamInstanceProfile.{which} is invalid. Invalid IAM Instance Profile {which}",
            )
        if spot:
            quota = quotas.spot_quota_of(instance_type)
            needed = self._vcpus_of(instance_type, region) * int(params.get("MinCount", "1"))
            used = self._spot_vcpus_in_use(quota, region)
            if used + needed > strict.quota(quota.code):
                return 400, "MaxSpotInstanceCountExceeded", "Max spot instance count exceeded"
        placed = self.placement_groups.refusal(params, region, zone, lambda t: self._cluster_supported(t, region))
        if placed is not None:
            return placed.status, placed.code, placed.message
        if _pool_matches(strict.refused_pools, instance_type, zone):
            return (
                500,
                "InsufficientInstanceCapacity",
                f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you requested ({zone}). "
                "Our system will be working on provisioning additional capacity.",
            )
        return None

    # ------------------------------------------------------------------ rules after moto
    def _after(self, handler, service: str, region: str, body: bytes, answer: Answer) -> Answer:
        if service == "s3" and answer.status == 404 and handler.command in ("GET", "HEAD"):
            return self._s3_missing(handler, answer)
        if service != "ec2":
            return answer
        params = _form(body)
        action = params.get("Action")
        if action == "RunInstances" and answer.status == 200 and params.get("DryRun") != "true":
            return self._launched(params, region, answer)
        if action == "DescribeInstances" and answer.status == 200 and not _instance_ids(params):
            return self._hide_young(answer)
        return answer

    def _launched(self, params: dict[str, str], region: str, answer: Answer) -> Answer:
        token = params.get("ClientToken")
        with self._lock:
            if token:
                self._tokens[token] = (params, answer)
            ids = [i.decode() for i in re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", answer.body)]
            for instance_id in ids:
                self._young[instance_id] = time.monotonic() + self.strictness.consistency_s
        self.placement_groups.launched(params, region, ids)
        reason = _pool_lookup(
            self.strictness.launch_failures, params.get("InstanceType", ""), self._zone_of(params, region)
        )
        if reason:
            timer = threading.Timer(self.strictness.launch_failure_after_s, _fail_launch, args=(ids, region, reason))
            timer.daemon = True
            timer.start()
        return answer

    def _hide_young(self, answer: Answer) -> Answer:
        with self._lock:
            young = {i for i, at in self._young.items() if at > time.monotonic()}
        if not young or not any(i.encode() in answer.body for i in young):
            return answer
        ET.register_namespace("", EC2_NS)
        root = ET.fromstring(answer.body)
        reservations = root.find(f"{{{EC2_NS}}}reservationSet")
        for item in list(reservations if reservations is not None else []):
            ids = {e.text for e in item.iter(f"{{{EC2_NS}}}instanceId")}
            if ids & young:
                reservations.remove(item)
        return dataclasses.replace(answer, body=ET.tostring(root, xml_declaration=True, encoding="UTF-8"))

    def _s3_missing(self, handler, answer: Answer) -> Answer:
        if not self.strictness.missing_keys_denied:
            return answer
        bucket, _, key = urlsplit(handler.path).path.lstrip("/").partition("/")
        if not key:
            return answer  # the bucket itself: NoSuchBucket stays 404
        what = f"{bucket}/{unquote(key)}"
        if handler.command == "GET":
            return self._denied("GET", what) if b"<Code>NoSuchKey</Code>" in answer.body else answer
        head = self._forward("HEAD", f"/{bucket}", handler.headers, b"")  # HEAD has no body to tell
        return self._denied("HEAD", what) if head.status == 200 else answer

    # ------------------------------------------------------------------ IAM and Service Quotas
    def _iam_before(self, params: dict[str, str]) -> Answer | None:
        if params.get("Action") != "CreateServiceLinkedRole" or params.get("AWSServiceName") != SPOT_SERVICE:
            return None
        iam = self._client("iam", "us-east-1")
        try:
            iam.get_role(RoleName=SPOT_SERVICE_LINKED_ROLE)
            return query_error(
                400,
                "InvalidInput",
                f"Service role name {SPOT_SERVICE_LINKED_ROLE} has been taken in this account, please try a different suffix.",
            )
        except iam.exceptions.NoSuchEntityException:
            pass
        role = iam.create_role(
            RoleName=SPOT_SERVICE_LINKED_ROLE,
            Path=f"/aws-service-role/{SPOT_SERVICE}/",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Principal": {"Service": SPOT_SERVICE}, "Action": "sts:AssumeRole"}
                    ],
                }
            ),
            Description="Default EC2 Spot Service Linked Role",
        )["Role"]
        body = (
            '<CreateServiceLinkedRoleResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
            f"<CreateServiceLinkedRoleResult><Role><Path>{role['Path']}</Path><RoleName>{role['RoleName']}</RoleName>"
            f"<RoleId>{role['RoleId']}</RoleId><Arn>{role['Arn']}</Arn>"
            f"<CreateDate>{role['CreateDate'].isoformat()}</CreateDate></Role></CreateServiceLinkedRoleResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></CreateServiceLinkedRoleResponse>"
        ).encode()
        return Answer(200, [("Content-Type", "text/xml")], body)

    def _service_quotas(self, target: str, body: bytes, region: str) -> Answer | None:
        if not target.endswith(".GetServiceQuota"):
            return None
        request = json.loads(body or b"{}")
        known = {q.code: q for q in quotas.ALL}
        quota = known.get(request.get("QuotaCode", ""))
        if request.get("ServiceCode") != quotas.SERVICE_CODE or quota is None:
            return None  # moto's own (VPC quotas), or its NoSuchResource
        document = {
            "Quota": {
                "ServiceCode": quotas.SERVICE_CODE,
                "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                "QuotaArn": f"arn:aws:servicequotas:{region}:123456789012:ec2/{quota.code}",
                "QuotaCode": quota.code,
                "QuotaName": quota.name,
                "Value": float(self.strictness.quota(quota.code)),
                "Unit": "None",
                "Adjustable": True,
                "GlobalQuota": False,
            }
        }
        return Answer(200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(document).encode())

    # ------------------------------------------------------------------ EventBridge
    def _put_events(self, handler, body: bytes) -> Answer | None:
        """PutEvents with AWS's reserved sources refused entry by entry; the rest sent to moto."""
        try:
            request = json.loads(body or b"{}")
            entries = request["Entries"]
            reserved = [isinstance(e.get("Source"), str) and e["Source"].startswith(AWS_SOURCE_PREFIX) for e in entries]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # malformed: moto's own validation error
        if not any(reserved):
            return None
        self.calls["events:PutEvents:NotAuthorizedForSourceException"] += sum(reserved)
        allowed = [e for e, refused in zip(entries, reserved, strict=True) if not refused]
        accepted: list[dict] = []
        failed = 0
        if allowed:
            answer = self._forward(
                handler.command, handler.path, handler.headers, json.dumps({**request, "Entries": allowed}).encode()
            )
            if answer.status != 200:
                return answer
            document = json.loads(answer.body)
            accepted, failed = document.get("Entries", []), int(document.get("FailedEntryCount", 0))
        refusal = {"ErrorCode": "NotAuthorizedForSourceException", "ErrorMessage": "Not authorized for the source."}
        answers = iter(accepted)
        merged = [dict(refusal) if refused else next(answers, {}) for refused in reserved]
        document = {"FailedEntryCount": failed + sum(reserved), "Entries": merged}
        return Answer(200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(document).encode())

    # ------------------------------------------------------------------ moto, asked directly
    def _client(self, service: str, region: str):
        import boto3

        key = f"client_{service}_{region}"
        client = getattr(self._local, key, None)
        if client is None:
            client = boto3.client(
                service,
                region_name=region or "us-east-1",
                endpoint_url=self.upstream,
                aws_access_key_id=PROXY_ACCESS_KEY,
                aws_secret_access_key=PROXY_ACCESS_KEY,
            )
            setattr(self._local, key, client)
        return client

    def _zone_of(self, params: dict[str, str], region: str) -> str:
        zone = params.get("Placement.AvailabilityZone")
        subnet = params.get("NetworkInterface.1.SubnetId") or params.get("SubnetId")
        if not zone and subnet:
            found = self._client("ec2", region).describe_subnets(SubnetIds=[subnet])["Subnets"]
            zone = found[0]["AvailabilityZone"] if found else ""
        return zone or f"{region}a"

    def _spot_role_exists(self, region: str) -> bool:
        if not self._spot_role_seen:
            iam = self._client("iam", region)
            try:
                iam.get_role(RoleName=SPOT_SERVICE_LINKED_ROLE)
                self._spot_role_seen = True
            except iam.exceptions.NoSuchEntityException:
                return False
        return True

    def _profile_usable(self, profile: str, region: str) -> bool:
        iam = self._client("iam", region)
        pages = iam.get_paginator("list_instance_profiles").paginate()
        for found in (p for page in pages for p in page["InstanceProfiles"]):
            if profile in (found["InstanceProfileName"], found["Arn"]):
                age = (datetime.now(timezone.utc) - found["CreateDate"]).total_seconds()
                return age >= self.strictness.profile_propagation_s
        return False

    def _vcpus_of(self, instance_type: str, region: str) -> int:
        if instance_type not in self._vcpus:
            described = self._client("ec2", region).describe_instance_types(InstanceTypes=[instance_type])
            info = described["InstanceTypes"][0]["VCpuInfo"] if described["InstanceTypes"] else {}
            self._vcpus[instance_type] = int(info.get("DefaultVCpus", 1))
        return self._vcpus[instance_type]

    def _cluster_supported(self, instance_type: str, region: str) -> bool:
        if instance_type not in self._cluster_ok:
            described = self._client("ec2", region).describe_instance_types(InstanceTypes=[instance_type])
            info = described["InstanceTypes"][0] if described["InstanceTypes"] else {}
            strategies = info.get("PlacementGroupInfo", {}).get("SupportedStrategies", ["cluster"])
            self._cluster_ok[instance_type] = "cluster" in strategies
        return self._cluster_ok[instance_type]

    def _not_terminated(self, region: str, instance_ids: list[str]) -> dict[str, str]:
        """{id: zone} of those instances moto does not list as terminated."""
        if not instance_ids:
            return {}
        pages = (
            self._client("ec2", region)
            .get_paginator("describe_instances")
            .paginate(Filters=[{"Name": "instance-id", "Values": instance_ids}])
        )
        return {
            i["InstanceId"]: i["Placement"]["AvailabilityZone"]
            for page in pages
            for r in page["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        }

    def _spot_vcpus_in_use(self, quota: quotas.SpotQuota, region: str) -> int:
        pages = (
            self._client("ec2", region)
            .get_paginator("describe_instances")
            .paginate(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
        )
        live = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        return sum(
            self._vcpus_of(i["InstanceType"], region)
            for i in live
            if i.get("InstanceLifecycle") == "spot" and quotas.spot_quota_of(i["InstanceType"]) == quota
        )


class _Upstream(http.client.HTTPConnection):
    """A connection to moto without Nagle's delay (a large body's last segment would wait for an ACK)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "upgrade"}


def _read_body(handler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _reply(handler, answer: Answer) -> None:
    handler.send_response(answer.status)
    for name, value in answer.headers:
        handler.send_header(name, value)
    length = next((v for k, v in answer.headers if k.lower() == "content-length"), None)
    if handler.command != "HEAD" or length is None:
        handler.send_header("Content-Length", str(len(answer.body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(answer.body)


def _json(status: int, document) -> Answer:
    return Answer(status, [("Content-Type", "application/json")], json.dumps(document).encode())


def _form(body: bytes) -> dict[str, str]:
    try:
        return {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        return {}


def _instance_ids(params: dict[str, str]) -> list[str]:
    return [v for k, v in params.items() if re.fullmatch(r"(InstanceId|ResourceId)(\.\d+)?", k) and v.startswith("i-")]


def _significant(params: dict[str, str]) -> dict[str, str]:
    """The parameters EC2 compares for a repeated ClientToken (not the signature's incidentals)."""
    return {k: v for k, v in params.items() if k not in ("Version",)}


def _pool_lookup(table: dict[str, str], instance_type: str, zone: str) -> str | None:
    return table.get(f"{instance_type}/{zone}") or table.get(f"{instance_type}/*")


def _pool_matches(pools: list[str], instance_type: str, zone: str) -> bool:
    return f"{instance_type}/{zone}" in pools or f"{instance_type}/*" in pools


def _fail_launch(instance_ids: list[str], region: str, code: str) -> None:
    from orchestrator.local.aws import end_instance

    for instance_id in instance_ids:
        end_instance(instance_id, region, (code, LAUNCH_FAILURES.get(code, code)), service=True)
