"""Offers: the pools (instance type x availability zone) a job may run in, priced and ranked.

Instance types come from the spec's list or its GPU requirement (`describe_instance_types` GpuInfo);
a type that only one requirement dropped is kept with the reason (`Offers.unmatched`), so a
requirement that leaves few types says why ("A10G has 22.4 GiB < min_memory_gib 24").
A type is excluded, with its reason, when the job's AMI cannot drive it (orchestrator.aws.amis), when
it has only a fraction of a GPU, when EC2 does not sell it as spot, or (for a GPU requirement that
names no models) when its GPU is pre-Turing. Where the rest are offered comes from
`describe_instance_type_offerings`; prices from a PriceSource. Pools without a spot price or above
`max_price_per_hour` are dropped, each with its reason; the rest are ranked by spot price (then by
more GPU memory, then by name, so the order is stable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from typing import TYPE_CHECKING

import botocore.exceptions

from orchestrator.aws.amis import AmiSupport, Image, support_of
from orchestrator.aws.clients import Cloud, error_code
from orchestrator.errors import UserError
from trainer.job.spec import LEGACY_GPU_MODELS, did_you_mean

if TYPE_CHECKING:
    from orchestrator.aws.prices import Pool, PriceSource
    from trainer.job.spec import ComputeSpec, GpuRequirement


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    gpu_model: str | None
    gpu_memory_gib: float  # per GPU
    vcpus: int
    memory_gib: float
    nvidia: bool = True
    x86_64: bool = True
    gpu_partition: float = 1.0
    """The smallest share of a full GPU the type has (GpuDeviceInfo.GpuPartitionSize): 1 for whole GPUs."""
    spot: bool = True
    """EC2 sells it as spot (SupportedUsageClasses)."""
    network_gbps: float | None = None
    """Baseline network bandwidth (NetworkCards' BaselineBandwidthInGbps; "up to" is only a burst)."""
    cluster_placement: bool = True
    """It can be launched in a cluster placement group (PlacementGroupInfo.SupportedStrategies; absent: assume so)."""
    efa: bool = False
    """It has an Elastic Fabric Adapter (NetworkInfo.EfaSupported): NCCL over EFA between nodes."""


@dataclass(frozen=True)
class Offer:
    instance: InstanceType
    zone: str
    spot_price: float
    on_demand_price: float | None
    on_demand_source: str | None

    @property
    def pool(self) -> Pool:
        return (self.instance.name, self.zone)

    @property
    def saving(self) -> float | None:
        """Share of the on-demand price saved, 0..1."""
        if not self.on_demand_price:
            return None
        return 1 - self.spot_price / self.on_demand_price

    def as_dict(self) -> dict:
        return {
            "instance_type": self.instance.name,
            "zone": self.zone,
            "gpus": self.instance.gpus,
            "gpu_model": self.instance.gpu_model,
            "gpu_memory_gib": self.instance.gpu_memory_gib,
            "vcpus": self.instance.vcpus,
            "memory_gib": self.instance.memory_gib,
            "spot_price": self.spot_price,
            "on_demand_price": self.on_demand_price,
            "on_demand_source": self.on_demand_source,
            "saving": self.saving,
        }


@dataclass
class Offers:
    ranked: list[Offer]
    dropped: list[tuple[Pool, str]] = field(default_factory=list)  # (pool, why)
    over_cap: dict[Pool, float] = field(default_factory=dict)  # the dropped pools' spot prices, where known
    excluded: dict[str, str] = field(default_factory=dict)  # instance type -> why it is not considered
    ami: AmiSupport | None = None  # the job's AMI and what it runs on
    notes: list[str] = field(default_factory=list)  # what the user should know (AMI not filtered, past its patches)
    unmatched: dict[str, str] = field(default_factory=dict)  # type -> the one GPU requirement that dropped it


def _instance_type(entry: dict) -> InstanceType:
    gpus = entry.get("GpuInfo", {}).get("Gpus", [])
    return InstanceType(
        name=entry["InstanceType"],
        gpus=sum(g.get("Count", 0) for g in gpus),
        gpu_model=gpus[0]["Name"] if gpus else None,
        gpu_memory_gib=round(gpus[0].get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024, 1) if gpus else 0.0,
        vcpus=entry.get("VCpuInfo", {}).get("DefaultVCpus", 0),
        memory_gib=round(entry.get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024, 1),
        nvidia=bool(gpus) and gpus[0].get("Manufacturer") == "NVIDIA",
        x86_64="x86_64" in entry.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"]),
        # Absent (older botocore models, emulators): whole. A partitioned type (g6f) also reports Count 0.
        gpu_partition=min((g.get("GpuPartitionSize", 1.0) for g in gpus), default=1.0),
        # Absent: assume spot; a pool EC2 has no spot price for is dropped later anyway.
        spot="spot" in entry.get("SupportedUsageClasses", ["spot"]),
        network_gbps=sum(
            c.get("BaselineBandwidthInGbps", 0.0) for c in entry.get("NetworkInfo", {}).get("NetworkCards", [])
        )
        or None,
        cluster_placement="cluster" in entry.get("PlacementGroupInfo", {}).get("SupportedStrategies", ["cluster"]),
        efa=bool(entry.get("NetworkInfo", {}).get("EfaSupported", False)),
    )


def exclusion(t: InstanceType, ami: AmiSupport, any_model: bool) -> str | None:
    """Why the job cannot use `t`, or None. `any_model`: the types come from a GPU requirement that
    names no models, so a pre-Turing GPU was not asked for."""
    if t.gpu_partition < 1:
        share = Fraction(t.gpu_partition).limit_denominator(64)
        return f"{share} of one {t.gpu_model} GPU: a fractional GPU needs NVIDIA's GRID driver"
    if not t.spot:
        return "EC2 does not sell it as spot (SupportedUsageClasses)"
    why = ami.rejects(t.name)
    if why:
        return why
    if any_model and t.gpu_model in LEGACY_GPU_MODELS:
        return (
            f"{t.gpu_model} is pre-Turing: the open-source NVIDIA driver cannot drive it; "
            "name it in compute.gpu.models for an AMI with the proprietary driver"
        )
    return None


def instance_types(cloud: Cloud, compute: ComputeSpec) -> tuple[list[InstanceType], dict[str, str]]:
    """The spec's instance types, or every GPU type that meets its GPU requirement; and the types one
    requirement alone dropped (type -> which and why: "A10G has 22.4 GiB < min_memory_gib 24")."""
    ec2 = cloud.client("ec2", retries="adaptive")
    if compute.instance_types:
        return _named_types(cloud, ec2, compute.instance_types), {}
    gpu = compute.gpu
    matching, dropped = [], {}
    for t in _all_types(ec2):
        if not (t.nvidia and t.x86_64):  # what the default (x86_64, CUDA) AMI runs: no requirement of the job's
            continue
        unmet = unmet_requirements(t, gpu)
        if not unmet:
            matching.append(t)
        elif len(unmet) == 1 and not unmet[0].startswith("models"):
            dropped[t.name] = unmet[0]  # a near miss: the one requirement that dropped it is worth saying
    if not matching:
        wanted = (
            f"{gpu.count} GPU(s)"
            + (f" of >= {gpu.min_memory_gib:g} GiB" if gpu.min_memory_gib else "")
            + (f", model {'/'.join(gpu.models)}" if gpu.models else "")
        )
        said = f" ({summarize_drops(dropped)})" if dropped else ""
        raise UserError(
            f"compute.gpu: no instance type in {cloud.region} has {wanted}{said}",
            _relax_hint(dropped, gpu) or "relax the GPU requirement, or list compute.instance_types",
        )
    return sorted(matching, key=lambda t: t.name), dict(sorted(dropped.items()))


def unmet_requirements(t: InstanceType, gpu: GpuRequirement) -> list[str]:
    """Each requirement of `gpu` that `t` does not meet, said as the field and the type's value."""
    unmet = []
    if gpu.models is not None and (t.gpu_model or "").lower() not in {m.lower() for m in gpu.models}:
        unmet.append(f"models: {t.gpu_model} is not one of {', '.join(gpu.models)}")
    if t.gpus != gpu.count:
        unmet.append(f"{t.gpus} {t.gpu_model} GPUs, not count {gpu.count}")
    if gpu.min_memory_gib is not None and t.gpu_memory_gib < gpu.min_memory_gib:
        unmet.append(f"{t.gpu_model} has {t.gpu_memory_gib:g} GiB < min_memory_gib {gpu.min_memory_gib:g}")
    return unmet


def summarize_drops(dropped: dict[str, str], shown: int = 3) -> str:
    """The dropped types by reason, a few names each: "A10G has 22.4 GiB < min_memory_gib 24: g5.xlarge, ..."."""
    by_reason: dict[str, list[str]] = {}
    for name, why in dropped.items():
        by_reason.setdefault(why, []).append(name)
    return "; ".join(
        f"{why}: {', '.join(names[:shown])}{f' and {len(names) - shown} more' if len(names) > shown else ''}"
        for why, names in by_reason.items()
    )


def _relax_hint(dropped: dict[str, str], gpu: GpuRequirement) -> str | None:
    """How far min_memory_gib must come down to take the types it dropped."""
    floors = [float(why.split(" has ")[1].split(" GiB")[0]) for why in dropped.values() if "min_memory_gib" in why]
    if not floors:
        return None
    below = int(max(floors))  # EC2 reports GPU memory in MiB: a "24 GB" A10G is 22.4 GiB
    return f"EC2 reports their GPU memory in MiB (22888 MiB = 22.4 GiB for a 24 GB A10G): set compute.gpu.min_memory_gib to {below} to take them"


def _named_types(cloud: Cloud, ec2, names: list[str]) -> list[InstanceType]:
    """The listed types, described; every name EC2 does not know is reported at once."""
    found, unknown = [], []
    for name in names:
        try:
            found += [_instance_type(t) for t in ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"]]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "InvalidInstanceType":
                raise
            unknown.append(name)
    if unknown:
        all_names = [t.name for t in _all_types(ec2)]
        said = "; ".join(f"'{name}'{did_you_mean(name, all_names)}" for name in unknown)
        raise UserError(
            f"compute.instance_types: {len(unknown)} of {len(names)} are not instance types in {cloud.region}: {said}",
            "fix or remove them (`aws ec2 describe-instance-types` lists the region's)",
        )
    return found


def _all_types(ec2) -> list[InstanceType]:
    pages = ec2.get_paginator("describe_instance_types").paginate(
        Filters=[{"Name": "processor-info.supported-architecture", "Values": ["x86_64", "arm64"]}]
    )
    return [_instance_type(t) for page in pages for t in page["InstanceTypes"] if "GpuInfo" in t]


def zones_offering(cloud: Cloud, types: list[str], allowed: list[str] | None) -> list[Pool]:
    ec2 = cloud.client("ec2", retries="adaptive")
    pools = []
    for chunk in (types[i : i + 20] for i in range(0, len(types), 20)):
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": chunk}]
        )
        for page in pages:
            pools += [
                (o["InstanceType"], o["Location"])
                for o in page["InstanceTypeOfferings"]
                if allowed is None or o["Location"] in allowed
            ]
    return sorted(set(pools))


def find_offers(
    cloud: Cloud, compute: ComputeSpec, prices: PriceSource, image: Image, today: date | None = None
) -> Offers:
    """Every pool the job may use on `image` (its AMI), ranked cheapest first; excluded types and
    dropped pools keep their reason."""
    ami = support_of(image)
    any_model = compute.instance_types is None and (compute.gpu is None or compute.gpu.models is None)
    types, excluded = {}, {}
    candidates, unmatched = instance_types(cloud, compute)
    for t in candidates:
        why = exclusion(t, ami, any_model)
        if why:
            excluded[t.name] = why
        else:
            types[t.name] = t
    if not types:
        raise UserError(
            "no instance type the job may use: " + "; ".join(f"{name}: {why}" for name, why in excluded.items()),
            f"{ami.describe()}; choose instance types it supports, or another compute.ami",
        )
    pools = zones_offering(cloud, sorted(types), compute.zones)
    if not pools:
        where = f"zones {', '.join(compute.zones)}" if compute.zones else cloud.region
        raise UserError(
            f"none of {', '.join(sorted(types))} is offered in {where}",
            "allow more availability_zones or instance types",
        )
    spot = prices.spot_prices(pools)
    on_demand = {name: prices.on_demand(name) for name in types}
    offers, dropped, over_cap = [], [], {}
    for pool in pools:
        name, zone = pool
        if pool not in spot:
            dropped.append((pool, "no spot price (no spot capacity offered)"))
            continue
        if compute.max_price_per_hour is not None and spot[pool] > compute.max_price_per_hour:
            dropped.append(
                (pool, f"spot ${spot[pool]:.4f}/h is above max_price_per_hour ${compute.max_price_per_hour:g}")
            )
            over_cap[pool] = spot[pool]
            continue
        price = on_demand[name]
        offers.append(
            Offer(types[name], zone, spot[pool], price.usd_per_hour if price else None, price.source if price else None)
        )
    offers.sort(key=lambda o: (o.spot_price, -o.instance.gpu_memory_gib, o.instance.name, o.zone))
    return Offers(offers, dropped, over_cap, excluded, ami, ami.notes(today or date.today()), unmatched)
