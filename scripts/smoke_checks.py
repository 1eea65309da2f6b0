"""The checks of scripts/aws-smoke.sh, each on a JSON document a spotctl command printed:

    python scripts/smoke_checks.py CHECK FILE      prints the detail and exits 0, or the reason and exits 1
                                                   (2: it never will pass, e.g. the job already ended)
    python scripts/smoke_checks.py value FILE KEY...   prints those fields of the document, one line
    python scripts/smoke_checks.py fis-documents DIR ACCOUNT PARTITION REGION
                                                   writes FIS's trust and permission policies (fis-*.json)
    python scripts/smoke_checks.py fis-template PATH INSTANCE_ARN ROLE_ARN RUN
                                                   writes the experiment template that interrupts one instance

Standard library only: it runs with whichever python the script was given.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path


class Failed(Exception):
    """What a check found wrong: its message is the reason on the FAIL line."""


class Hopeless(Failed):
    """What waiting longer cannot mend: the job is past the point the check waits for."""


def need(condition: object, reason: str, hopeless: bool = False) -> None:
    if not condition:
        raise (Hopeless if hopeless else Failed)(reason)


TERMINAL = {"succeeded", "failed", "cancelled", "budget_exceeded", "no_capacity"}


def why(d: dict) -> str:
    """The job's state, with why it is there when status knows."""
    reason = d["outcome_reason"] or (d["final"] or {}).get("error")
    return d["state"] + (f" ({reason})" if reason else "")


def deployed(d: dict) -> str:
    need(d.get("storage") and d.get("instance_profile") and d.get("security_group"), f"outputs missing: {d}")
    profile = d["instance_profile"].rsplit("/", 1)[-1]
    return (
        f"stack {d['stack']}: storage {d['storage']}, instance profile {profile}, security group {d['security_group']}"
    )


def local_up(d: dict) -> str:
    need(d["started"], "a local cloud was already running in this SPOTCTL_HOME")
    return f"local cloud up at {d['endpoint']} (pid {d['pid']}): bucket {d['bucket']}, instance profile spotctl-trainer"


def doctor(d: dict) -> str:
    problems = [f"{c['name']}: {c['detail']}" for c in d["checks"] if c["verdict"] == "problem"]
    need(d["ready"] and not problems, "; ".join(problems) or "not ready")
    warned = sorted({c["name"] for c in d["checks"] if c["verdict"] != "ok"})
    return f"ready to launch ({len(d['checks'])} checks" + (f"; warnings: {', '.join(warned)})" if warned else ")")


def launched(d: dict) -> str:
    need(d["instance_id"], "no instance started")
    which = "the cheapest offer" if d["offer"] else "the cheapest offer refused, the next one taken"
    return (
        f"{d['job_id']} on {d['instance_id']}, {d['instance_type']} in {d['zone']} at ${d['spot_price']:.4f}/h: {which}"
    )


def running(d: dict) -> str:
    """Running, and the trainer's heartbeat says it trains: the moment to interrupt it."""
    progress = d["progress"] or {}
    need(d["state"] != "succeeded", "the job finished before it was seen training: make it longer (SMOKE_EPOCHS)", True)
    need(d["state"] not in TERMINAL, f"the job ended {why(d)}", hopeless=True)
    need(d["state"] == "running", f"state {d['state']}")
    need(
        d["heartbeat_age_s"] is not None and progress.get("phase") == "training" and progress.get("step"),
        f"heartbeat: {progress.get('phase') or 'none yet'}",
    )
    return (
        f"{d['attempts'][-1]['instance_id']} running; heartbeat {d['heartbeat_age_s']:.0f} s old: "
        f"training, step {progress['step']}/{progress['total_steps']}"
    )


def interrupted(d: dict) -> str:
    first = d["attempts"][0]
    need(
        first["end_reason"] != "succeeded",
        "the job finished before the notice came: make it longer (SMOKE_EPOCHS)",
        hopeless=True,
    )
    need(first["end_reason"] in (None, "interrupted"), f"attempt 1 ended {first['end_reason']}", hopeless=True)
    need(first["end_reason"] == "interrupted", f"attempt 1: {first.get('instance_state') or 'still running'}")
    return f"attempt 1 ended interrupted at step {first['end_step']}"


def recovered(d: dict) -> str:
    """Attempt 2 resumed where the notice's checkpoint left attempt 1, on another pool, and finished."""
    attempts = d["attempts"]
    need(d["state"] == "succeeded", f"the job ended {why(d)}")
    need(len(attempts) == 2, f"{len(attempts)} attempts: {', '.join(str(a['end_reason']) for a in attempts)}")
    first, second = attempts
    need(
        first["state_reason"] == "Server.SpotInstanceTermination",
        f"attempt 1's instance ended with EC2's reason {first['state_reason']}",
    )
    need(
        first["end_step"] and second["start_step"] == first["end_step"],
        f"attempt 2 started at step {second['start_step']}, attempt 1 ended at step {first['end_step']}",
    )
    need(
        (first["instance_type"], first["zone"]) != (second["instance_type"], second["zone"]),
        f"attempt 2 ran in the interrupted pool {first['instance_type']} {first['zone']}",
    )
    need(second["end_reason"] == "succeeded", f"attempt 2: {second['end_reason']}")
    progress = d["progress"]
    return (
        f"attempt 1 interrupted (Server.SpotInstanceTermination) at step {first['end_step']}; "
        f"attempt 2 on {second['instance_type']} in {second['zone']} resumed at step {second['start_step']} "
        f"and succeeded at step {progress['step']}/{progress['total_steps']}"
    )


def cost(d: dict) -> str:
    c = d["cost"]
    need(c, "no cost in status --json")
    charged = [a["usd"] for a in c["attempts"]]
    need(c["total_usd"] > 0 and all(usd > 0 for usd in charged), f"total ${c['total_usd']}, attempts {charged}")
    need(c["savings"] is not None, f"savings unknown: {c['savings_unknown']}")
    need(
        0 < c["savings"] < 1 and c["on_demand_usd"] > c["total_usd"],
        f"savings {c['savings']}, on-demand ${c['on_demand_usd']} for ${c['total_usd']}",
    )
    first = c["attempts"][0]
    need(
        first["free_by_first_hour_rule"] and first["instance_usd"] == 0,
        "attempt 1's instance charged, though EC2 interrupted it in its first hour",
    )
    return (
        f"${c['total_usd']:.4f} (instance ${c['instance_usd']:.4f}, volumes ${c['ebs_usd']:.4f}, "
        f"IPv4 ${c['public_ipv4_usd']:.4f}), {c['savings']:.0%} below on-demand (${c['on_demand_usd']:.4f}); "
        "attempt 1's instance free (interrupted in its first hour)"
    )


CHECKS: dict[str, Callable[[dict], str]] = {
    f.__name__.replace("_", "-"): f
    for f in (deployed, local_up, doctor, launched, running, interrupted, recovered, cost)
}


def fis_documents(folder: str, account: str, partition: str, region: str) -> None:
    """The role FIS acts with: assumable by FIS for this account only; it may interrupt this account's
    instances in the region (and describe instances, which FIS needs to resolve its targets)."""
    trust = {
        "Effect": "Allow",
        "Principal": {"Service": "fis.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account}},
    }
    grants = [
        {
            "Effect": "Allow",
            "Action": "ec2:SendSpotInstanceInterruptions",
            "Resource": f"arn:{partition}:ec2:{region}:{account}:instance/*",
        },
        {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
    ]
    for name, statements in (("fis-trust.json", [trust]), ("fis-policy.json", grants)):
        Path(folder, name).write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}, indent=1))


def fis_template(path: str, instance_arn: str, role_arn: str, run: str) -> None:
    """One action: EC2's two-minute spot notice to one instance, then its interruption (terminate)."""
    template = {
        "description": f"spotctl smoke test {run}: interrupt {instance_arn.rsplit('/', 1)[-1]}",
        "roleArn": role_arn,
        "stopConditions": [{"source": "none"}],
        "targets": {
            "smokeInstance": {
                "resourceType": "aws:ec2:spot-instance",
                "resourceArns": [instance_arn],
                "selectionMode": "ALL",
            }
        },
        "actions": {
            "interrupt": {
                "actionId": "aws:ec2:send-spot-instance-interruptions",
                "parameters": {"durationBeforeInterruption": "PT2M"},
                "targets": {"SpotInstances": "smokeInstance"},
            }
        },
        "tags": {"spotctl:smoke": run},
    }
    Path(path).write_text(json.dumps(template, indent=1))


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "fis-documents":
        fis_documents(*args)
        return 0
    if command == "fis-template":
        fis_template(*args)
        return 0
    path = args[0]
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as problem:
        print(f"no JSON document in {path}: {problem}")
        return 1
    if command == "value":
        print(" ".join(str(document[key]) for key in args[1:]))
        return 0
    try:
        print(CHECKS[command](document))
    except Failed as problem:
        print(problem)
        return 2 if isinstance(problem, Hopeless) else 1
    except (KeyError, IndexError, TypeError) as problem:
        print(f"unexpected document ({type(problem).__name__}: {problem}); see {path}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
