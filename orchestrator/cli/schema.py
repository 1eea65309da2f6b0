"""`spotctl schema`: the JSON Schema of job.yaml (for editors), or its Markdown reference."""

from __future__ import annotations

import json

import click

from orchestrator.spec_reference import markdown_reference
from trainer.job.spec import json_schema


@click.command("schema")
@click.option("--markdown", is_flag=True, help="Print the job.yaml reference as a Markdown table instead.")
def command(markdown: bool) -> int:
    """Print the JSON Schema of job.yaml.

    Save it and point your editor at it for completion and checks, e.g. with the YAML language
    server: add `# yaml-language-server: $schema=job.schema.json` at the top of the job file.
    """
    click.echo(markdown_reference() if markdown else json.dumps(json_schema(), indent=2))
    return 0
