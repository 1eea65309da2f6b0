"""The job.yaml reference in Markdown, generated from the JSON Schema so it cannot drift from it."""

from __future__ import annotations

import json

from trainer.job.spec import json_schema

# README.md holds the reference between these markers; a test keeps it equal to markdown_reference().
README_START = "<!-- job-reference:start -->"
README_END = "<!-- job-reference:end -->"


def markdown_reference() -> str:
    schema = json_schema()
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    _rows(schema, schema["$defs"], "", rows)
    return "\n".join(rows) + "\n"


def _rows(node: dict, defs: dict, prefix: str, rows: list[str]) -> None:
    required = set(node.get("required", []))
    for name, prop in node["properties"].items():
        path = f"{prefix}{name}"
        target = _object_ref(prop, defs)
        default = "**required**" if name in required else _inline(prop["default"]) if "default" in prop else ""
        description = " ".join(prop.get("description", "").split()).replace("|", "\\|")
        if target is not None and "properties" in target and not _is_nullable(prop):
            rows.append(f"| `{path}` | section | | {description} |")
            _rows(target, defs, f"{path}.", rows)
            continue
        if target is not None and "properties" in target:  # an optional section
            rows.append(f"| `{path}` | section or null | {default} | {description} |")
            _rows(target, defs, f"{path}.", rows)
            continue
        if prop.get("type") == "array" and "$ref" in prop.get("items", {}):
            item = defs[prop["items"]["$ref"].split("/")[-1]]
            rows.append(f"| `{path}` | list of sections | {default} | {description} |")
            _rows(item, defs, f"{path}[].", rows)
            continue
        rows.append(f"| `{path}` | {_type(prop, defs)}{_bounds(prop)} | {default} | {description} |")


def _object_ref(prop: dict, defs: dict) -> dict | None:
    for option in [prop, *prop.get("anyOf", [])]:
        if "$ref" in option:
            return defs[option["$ref"].split("/")[-1]]
    return None


def _is_nullable(prop: dict) -> bool:
    return any(option.get("type") == "null" for option in prop.get("anyOf", []))


def _type(prop: dict, defs: dict) -> str:
    if "anyOf" in prop:
        return " \\| ".join(_type(option, defs) for option in prop["anyOf"])
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(p, defs) for p in prop["prefixItems"]) + "]"
        return f"list[{_type(prop.get('items', {}), defs)}]"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}.get(kind, "any")


def _bounds(prop: dict) -> str:
    marks = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}
    found = [
        f"{sign} {_number(option[key])}"
        for option in [prop, *prop.get("anyOf", [])]
        for key, sign in marks.items()
        if key in option
    ]
    return f" ({', '.join(found)})" if found else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _inline(value) -> str:
    return f"`{json.dumps(value)}`"
