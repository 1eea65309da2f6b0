"""Whether an IAM role's identity policies allow an S3 request: enough of IAM's evaluation to tell a
user, before a GPU is paid for, that the instance role cannot read the data or write the job's prefix.

It reads the role's inline and attached policies and evaluates Allow/Deny statements with wildcards
in Action and Resource, and the `s3:prefix` condition (StringLike / StringEquals) that ListBucket
grants carry. Other conditions are taken as *not* met for an Allow and as met for a Deny, so a
"yes" is one IAM would give too. Bucket policies, SCPs and permission boundaries are not read: a
"no" is definite for the role's own policies, a "yes" may still meet a refusal elsewhere.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True)
class Request:
    action: str  # e.g. s3:GetObject
    resource: str  # e.g. arn:aws:s3:::bucket/key
    prefix: str | None = None  # the s3:prefix of a ListBucket


def role_policies(iam, role_name: str) -> list[dict]:
    """The policy documents of a role: inline and attached (their default versions)."""
    documents = []
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        documents.append(_document(iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]))
    for attached in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]:
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        version = iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"])
        documents.append(_document(version["PolicyVersion"]["Document"]))
    return documents


def allows(documents: list[dict], request: Request) -> bool:
    """IAM's answer for the role's own policies: an explicit Deny wins, then any Allow."""
    statements = [s for d in documents for s in _listed(d.get("Statement", []))]
    if any(s.get("Effect") == "Deny" and _matches(s, request, deny=True) for s in statements):
        return False
    return any(s.get("Effect") == "Allow" and _matches(s, request, deny=False) for s in statements)


def _matches(statement: dict, request: Request, deny: bool) -> bool:
    actions = _listed(statement.get("Action", []))
    resources = _listed(statement.get("Resource", []))
    if not any(fnmatch.fnmatchcase(request.action.lower(), a.lower()) for a in actions):
        return False
    if not any(fnmatch.fnmatchcase(request.resource, r) for r in resources):
        return False
    return _conditions_met(statement.get("Condition", {}), request, deny)


def _conditions_met(conditions: dict, request: Request, deny: bool) -> bool:
    for operator, keys in conditions.items():
        for key, values in keys.items():
            if key.lower() != "s3:prefix" or operator not in ("StringLike", "StringEquals"):
                return deny  # a condition this check cannot evaluate
            if request.prefix is None:
                return False
            wanted = _listed(values)
            if operator == "StringEquals" and request.prefix not in wanted:
                return False
            if operator == "StringLike" and not any(fnmatch.fnmatchcase(request.prefix, v) for v in wanted):
                return False
    return True


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _document(document) -> dict:
    """A policy document as IAM gives it: boto3 decodes it; a raw answer is URL-encoded JSON."""
    if not isinstance(document, str):
        return document
    try:
        return json.loads(unquote(document))
    except json.JSONDecodeError as exc:
        raise ValueError(f"a policy document is not JSON ({exc})") from None
