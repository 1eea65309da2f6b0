"""A value that must never be shown whole: a webhook URL is a bearer credential (anyone holding a Slack
or Discord webhook URL can post as it), so it is shown masked everywhere (validate, status, logs, error
messages) and only `reveal()` gives it, to the code that stores it for the controller or sends to it.

`Secret` is a pydantic type: validated from a string, it serialises masked unless the dump is asked
for the secrets (`model_dump(context={REVEAL: True})`), so a model dumped for showing cannot leak it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic_core import core_schema

REVEAL = "reveal_secrets"  # the serialisation context key that writes Secret values whole


def masked(url: str) -> str:
    """Scheme and host only: enough to tell which service it goes to, nothing that lets one post."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "***"
    return f"{parts.scheme}://{host}/***" if parts.scheme and host else "***"


class Secret:
    """A secret string: `str()`, `repr()` and formatting mask it; `reveal()` is the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return masked(self._value)

    def __repr__(self) -> str:
        return f"Secret({masked(self._value)!r})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        def serialise(value: Secret, info: core_schema.SerializationInfo) -> str:
            return value.reveal() if (info.context or {}).get(REVEAL) else str(value)

        return core_schema.no_info_after_validator_function(
            lambda value: value if isinstance(value, Secret) else cls(value),
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(
                serialise, info_arg=True, return_schema=core_schema.str_schema()
            ),
        )
