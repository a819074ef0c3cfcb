"""What every settings section shares (the admission policy, drift, challengers, Kafka, the generators...).

A section is a frozen pydantic model whose fields carry their defaults and descriptions: the one source of
both. Sections live beside the code they configure and never read the environment; `flows.runtime.settings`
composes them and reads each from its `SERVING_*` variables, and docs/configuration.md's tables are
generated from the fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

# Key of a field's `json_schema_extra` giving its default in words, where the value is a path of this machine.
SHOWN_DEFAULT = "shown_default"


class Section(BaseModel):
    """A group of settings: immutable once read, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def parsed_text(parse: Callable[[str], Any]) -> Any:
    """Annotation metadata for a field the environment gives as text: `parse` turns the text into the
    field's value (a value that is not text, given in code, is validated as it is). Used with `NoDecode`,
    so that pydantic-settings hands over the text instead of decoding it as JSON."""

    def from_text(value: Any) -> Any:
        return parse(value) if isinstance(value, str) else value

    return BeforeValidator(from_text)


def comma_separated(text: str) -> tuple[str, ...]:
    """A comma-separated list's non-empty, stripped entries."""
    return tuple(entry.strip() for entry in text.split(",") if entry.strip())
