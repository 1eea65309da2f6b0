"""EC2's words for an instance, as spotctl reads them: its tags, states and state reason codes, and
`Instance`, one attempt's instance as EC2 describes it. Plain data: the state machine (jobs.state) and
the local cloud use it without anything that calls AWS.
"""

from __future__ import annotations

from dataclasses import dataclass

TAG_JOB, TAG_ATTEMPT = "spotctl:job", "spotctl:attempt"
TAG_NODE = "spotctl:node"  # the node rank of one machine of a multi-node job (compute.nodes > 1)
# EC2 Spot's service-linked role: the first spot launch of an account creates it with the caller's
# rights, which an operator held to spotctl's policy lacks (`infra deploy` creates it).
SPOT_SERVICE, SPOT_SERVICE_LINKED_ROLE = "spot.amazonaws.com", "AWSServiceRoleForEC2Spot"
CREATE_SPOT_ROLE = f"aws iam create-service-linked-role --aws-service-name {SPOT_SERVICE}"
LIVE = ("pending", "running")
GONE = ("shutting-down", "terminated", "stopping", "stopped")
# EC2's state reason codes spotctl reads.
SPOT_TERMINATION = "Server.SpotInstanceTermination"
USER_SHUTDOWN = "Client.UserInitiatedShutdown"
SELF_SHUTDOWN = "Client.InstanceInitiatedShutdown"
# EC2 could not start the machine (pending -> terminated). `Server.*`: its side (capacity, an internal
# error): another pool may work. `Client.*` other than the two shutdowns above: the request's own
# fault (a KMS key it may not use, a volume limit, a missing snapshot): the same request fails again.
# Source: the StateReason codes of the EC2 API reference (API_StateReason).
SERVER_LAUNCH_FAILURES = ("Server.InsufficientInstanceCapacity", "Server.InternalError")


def launch_failure(code: str | None) -> str | None:
    """ "server" or "client" when `code` says EC2 could not start the instance, else None."""
    if code in SERVER_LAUNCH_FAILURES:
        return "server"
    if code and code.startswith("Client.") and code not in (USER_SHUTDOWN, SELF_SHUTDOWN):
        return "client"
    return None


@dataclass
class Instance:
    """EC2's view of one attempt's instance."""

    instance_id: str
    state: str
    reason_code: str | None  # e.g. Server.SpotInstanceTermination, Client.UserInitiatedShutdown
    reason: str | None
    attempt: int | None
    transition: str | None = None  # StateTransitionReason, e.g. "User initiated (2026-11-25 10:00:00 GMT)"


@dataclass(frozen=True)
class NodeMachine:
    """A live machine tagged as one node of a multi-node attempt (`spotctl:node`), as EC2 describes it:
    what a launcher that died before recording its nodes may have left running (ec2.node_machines)."""

    instance_id: str
    rank: int  # its `spotctl:node` tag
    instance_type: str
    zone: str
    client_token: str | None  # the RunInstances ClientToken it was started with
    launched_at: str  # EC2's LaunchTime, ISO: billing is counted from the machine's own start
