"""`spotctl offers JOB.yaml`: the spot pools the job may use, cheapest first."""

from __future__ import annotations

import json

import click

from orchestrator.aws.ec2 import describe_image
from orchestrator.aws.offers import Offer, Offers, find_offers, summarize_drops
from orchestrator.cli import options, render
from orchestrator.cli.context import App


def offer_rows(offers: list[Offer], nodes: int = 1) -> list[list]:
    """One row per offer; with several nodes, the last column is what all of them cost an hour."""
    return [
        [
            o.instance.name,
            o.instance.gpus,
            o.instance.gpu_model,
            f"{o.instance.gpu_memory_gib:g} GiB",
            o.instance.vcpus,
            f"{o.instance.memory_gib:g} GiB",
            o.zone,
            render.price(o.spot_price),
            render.price(o.on_demand_price),
            "-" if o.saving is None else f"{o.saving:.0%}",
        ]
        + ([render.price(o.spot_price * nodes)] if nodes > 1 else [])
        for o in offers
    ]


def offer_headers(nodes: int = 1) -> list[str]:
    return OFFER_HEADERS + ([f"spot $/h x {nodes} nodes"] if nodes > 1 else [])


OFFER_HEADERS = ["type", "GPUs", "GPU", "GPU memory", "vCPUs", "memory", "zone", "spot $/h", "on-demand $/h", "saving"]


def warn(found: Offers) -> None:
    """The notes about the job's AMI (not filtered by it, or past its end of patch), and the types the
    GPU requirement dropped, on stderr."""
    for note in found.notes:
        click.echo(f"warning: {note}", err=True)
    if found.unmatched:
        click.echo(
            f"note: compute.gpu dropped {len(found.unmatched)} instance type{'s' * (len(found.unmatched) != 1)} "
            f"that meet the rest of it: {summarize_drops(found.unmatched)}",
            err=True,
        )


@click.command("offers")
@click.argument("job_file", metavar="JOB.yaml")
@options.region_option
@options.local_option
@options.profile_option
@click.option("--top", type=click.IntRange(min=1), metavar="N", help="Show only the N cheapest offers.")
@options.json_option
@click.pass_obj
def command(app: App, job_file: str, region: str | None, profile: str | None, top: int | None, as_json: bool) -> int:
    """List the spot offers (instance type x zone) JOB.yaml may run on, cheapest first."""
    spec = app.load_job(job_file, region)
    cloud = app.cloud(spec.region, profile)
    found = find_offers(cloud, spec.compute, app.prices(cloud), describe_image(cloud, spec.compute.ami))
    shown = found.ranked[:top] if top else found.ranked
    nodes = spec.compute.nodes
    if as_json:
        ami = found.ami
        for note in found.notes:
            click.echo(f"warning: {note}", err=True)
        click.echo(
            json.dumps(
                {
                    "nodes": nodes,
                    "offers": [{**o.as_dict(), "spot_price_all_nodes": round(o.spot_price * nodes, 6)} for o in shown],
                    "count": len(found.ranked),
                    "dropped": [{"instance_type": t, "zone": z, "reason": why} for (t, z), why in found.dropped],
                    "excluded": [{"instance_type": t, "reason": why} for t, why in found.excluded.items()],
                    "unmatched": [{"instance_type": t, "reason": why} for t, why in found.unmatched.items()],
                    "ami": {
                        "id": ami.image.id,
                        "name": ami.image.name,
                        "families": sorted(ami.families) if ami.families is not None else None,
                        "families_from": ami.source,
                        "pytorch": ami.pytorch,
                        "end_of_patch": str(ami.end_of_patch()) if ami.end_of_patch() else None,
                    },
                    "notes": found.notes,
                },
                indent=2,
            )
        )
        return 0
    for note in found.notes:
        click.echo(f"warning: {note}", err=True)
    out = render.console()
    title = f"{len(found.ranked)} offers in {cloud.region}" + (
        f", the {len(shown)} cheapest shown" if len(shown) < len(found.ranked) else ""
    )
    if nodes > 1:
        title += f"; prices are per instance-hour, the last column for all {nodes} nodes (compute.nodes)"
    out.print(render.table(offer_headers(nodes), offer_rows(shown, nodes), title=title))
    out.print(found.ami.describe(), markup=False)
    if found.excluded:
        out.print(f"{len(found.excluded)} instance types not considered:", markup=False)
        for name, why in found.excluded.items():
            out.print(f"  {name}: {why}", markup=False)
    if found.unmatched:
        out.print(
            f"{len(found.unmatched)} instance types dropped by compute.gpu (they meet the rest of it):", markup=False
        )
        for name, why in found.unmatched.items():
            out.print(f"  {name}: {why}", markup=False)
    if found.dropped:
        out.print(
            f"{len(found.dropped)} pools dropped, e.g. {found.dropped[0][0][0]} in {found.dropped[0][0][1]}: {found.dropped[0][1]}"
        )
    sources = {o.on_demand_source for o in found.ranked if o.on_demand_source}
    if sources:
        out.print(f"on-demand prices: {', '.join(sorted(sources))}")
    return 0
