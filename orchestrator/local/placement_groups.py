"""Placement groups for the local cloud's strict proxy: moto has none (it accepts
`Placement.GroupName` on RunInstances and ignores it), so the proxy answers CreatePlacementGroup,
DescribePlacementGroups and DeletePlacementGroup itself, and checks RunInstances against them, the
way AWS does (EC2 API reference, those actions and their error codes; user guide, "Placement group
rules and limitations"):

- a name is unique per region: a second CreatePlacementGroup is `InvalidPlacementGroup.Duplicate`;
- describing or deleting an unknown group, or launching into one, is `InvalidPlacementGroup.Unknown`;
- a group with an instance that is not terminated cannot be deleted: `InvalidPlacementGroup.InUse`;
- a cluster group lies in one zone: launching into it in another zone while it holds an instance is
  `InvalidPlacementGroup.InUse ... is in use in another availability zone: <zone>` (the message
  terraform-provider-aws#1772 and bcbio-nextgen-vm#45 quote);
- a cluster group takes only types whose PlacementGroupInfo.SupportedStrategies has `cluster`
  (moto's instance types carry it), and no spot instance that stops or hibernates on interruption.

Filters: `group-name`, `strategy`, `state`, `tag:<key>`, `tag-key`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
PLACEMENT_ACTIONS = ("CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup")
ACCOUNT = "123456789012"  # moto's default account


@dataclass
class Group:
    name: str
    strategy: str
    group_id: str
    region: str
    tags: dict[str, str] = field(default_factory=dict)
    instances: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str


class PlacementGroups:
    """The groups of every region, with the instances launched into each. `alive(region, ids)` tells
    which of those instances are not terminated yet (the proxy asks moto)."""

    def __init__(self, alive: Callable[[str, list[str]], dict[str, str]]):
        self._alive = alive  # (region, ids) -> {id: zone} of those not terminated
        self._groups: dict[tuple[str, str], Group] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._groups.clear()

    # ------------------------------------------------------------------ the three actions
    def answer(self, action: str, params: dict[str, str], region: str) -> tuple[int, bytes]:
        if action == "CreatePlacementGroup":
            return self._create(params, region)
        if action == "DescribePlacementGroups":
            return self._describe(params, region)
        return self._delete(params, region)

    def _create(self, params: dict[str, str], region: str) -> tuple[int, bytes]:
        name = params.get("GroupName") or f"pg-{uuid.uuid4().hex[:17]}"
        strategy = params.get("Strategy", "cluster")
        if strategy not in ("cluster", "spread", "partition"):
            return _error(400, "InvalidParameterValue", f"Value ({strategy}) for parameter strategy is invalid.")
        tags = _tags(params, "placement-group")
        with self._lock:
            if (region, name) in self._groups:
                return _error(400, "InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists.")
            group = Group(name, strategy, f"pg-{uuid.uuid4().hex[:17]}", region, tags)
            self._groups[(region, name)] = group
        return 200, _response("CreatePlacementGroup", f"<placementGroup>{_group_xml(group)}</placementGroup>")

    def _describe(self, params: dict[str, str], region: str) -> tuple[int, bytes]:
        names = [v for k, v in sorted(params.items()) if k.startswith("GroupName.")]
        ids = [v for k, v in sorted(params.items()) if k.startswith("GroupId.")]
        filters = _filters(params)
        with self._lock:
            groups = [g for (r, _), g in self._groups.items() if r == region]
        for name in names:
            if not any(g.name == name for g in groups):
                return _error(400, "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
        chosen = [
            g
            for g in groups
            if (not names or g.name in names) and (not ids or g.group_id in ids) and _matches(g, filters)
        ]
        items = "".join(f"<item>{_group_xml(g)}</item>" for g in chosen)
        return 200, _response("DescribePlacementGroups", f"<placementGroupSet>{items}</placementGroupSet>")

    def _delete(self, params: dict[str, str], region: str) -> tuple[int, bytes]:
        name = params.get("GroupName", "")
        with self._lock:
            group = self._groups.get((region, name))
        if group is None:
            return _error(400, "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
        if self._alive(region, sorted(group.instances)):
            return _error(
                400, "InvalidPlacementGroup.InUse", f"The placement group '{name}' is in use and may not be deleted."
            )
        with self._lock:
            self._groups.pop((region, name), None)
        return 200, _response("DeletePlacementGroup", "<return>true</return>")

    # ------------------------------------------------------------------ RunInstances
    def refusal(
        self, params: dict[str, str], region: str, zone: str, cluster_ok: Callable[[str], bool]
    ) -> Refusal | None:
        """Why AWS would refuse this RunInstances for its placement group, or None."""
        name = params.get("Placement.GroupName")
        if not name:
            return None
        with self._lock:
            group = self._groups.get((region, name))
        if group is None:
            return Refusal(400, "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
        if group.strategy != "cluster":
            return None
        instance_type = params.get("InstanceType", "m1.small")
        if not cluster_ok(instance_type):
            return Refusal(
                400,
                "InvalidParameterCombination",
                f"The instance type {instance_type} is not supported in a cluster placement group.",
            )
        if params.get("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", "terminate") != "terminate":
            return Refusal(
                400,
                "InvalidParameterCombination",
                "You can't launch a Spot Instance that is configured to stop or hibernate on interruption in a placement group.",
            )
        zones = set(self._alive(region, sorted(group.instances)).values())
        if zones and zone not in zones:
            return Refusal(
                400,
                "InvalidPlacementGroup.InUse",
                f"The placement group '{name}' is in use in another availability zone: {sorted(zones)[0]}",
            )
        return None

    def launched(self, params: dict[str, str], region: str, instance_ids: list[str]) -> None:
        name = params.get("Placement.GroupName")
        with self._lock:
            group = self._groups.get((region, name)) if name else None
            if group is not None:
                group.instances.update(instance_ids)

    def group_of(self, region: str, instance_id: str) -> str | None:
        with self._lock:
            return next(
                (g.name for (r, _), g in self._groups.items() if r == region and instance_id in g.instances), None
            )


# ---------------------------------------------------------------------- the query protocol's shapes
def _tags(params: dict[str, str], resource_type: str) -> dict[str, str]:
    tags = {}
    for n in range(1, 10):
        if params.get(f"TagSpecification.{n}.ResourceType") != resource_type:
            continue
        for m in range(1, 51):
            key = params.get(f"TagSpecification.{n}.Tag.{m}.Key")
            if key is None:
                break
            tags[key] = params.get(f"TagSpecification.{n}.Tag.{m}.Value", "")
    return tags


def _filters(params: dict[str, str]) -> dict[str, list[str]]:
    found = {}
    for n in range(1, 51):
        name = params.get(f"Filter.{n}.Name")
        if name is None:
            break
        found[name] = [params[f"Filter.{n}.Value.{m}"] for m in range(1, 201) if f"Filter.{n}.Value.{m}" in params]
    return found


def _matches(group: Group, filters: dict[str, list[str]]) -> bool:
    for name, values in filters.items():
        if name == "group-name":
            have = [group.name]
        elif name == "strategy":
            have = [group.strategy]
        elif name == "state":
            have = ["available"]
        elif name == "tag-key":
            have = list(group.tags)
        elif name.startswith("tag:"):
            have = [group.tags[name[4:]]] if name[4:] in group.tags else []
        else:
            continue  # a filter AWS knows and these groups cannot fail (group-arn, spread-level...)
        if not set(have) & set(values):
            return False
    return True


def _group_xml(group: Group) -> str:
    tags = "".join(f"<item><key>{_x(k)}</key><value>{_x(v)}</value></item>" for k, v in group.tags.items())
    return (
        f"<groupName>{_x(group.name)}</groupName><state>available</state><strategy>{group.strategy}</strategy>"
        f"<groupId>{group.group_id}</groupId><tagSet>{tags}</tagSet>"
        f"<groupArn>arn:aws:ec2:{group.region}:{ACCOUNT}:placement-group/{_x(group.name)}</groupArn>"
    )


def _response(action: str, inner: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><{action}Response xmlns="{EC2_NS}">'
        f"<requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>"
    ).encode()


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, (
        f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
        f"<Message>{_x(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def _x(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
