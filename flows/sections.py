"""What every settings section shares (the admission policy, drift, challengers, Kafka, the generators...).

A section is a frozen pydantic model whose fields carry their defaults and descriptions: the one source of
both. Sections live beside the code they configure and never read the environment; `flows.settings`
composes them and reads each from its `SERVING_*` variables, and docs/configuration.md's tables are
generated from the fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# Key of a field's `json_schema_extra` giving its default in words, where the value is a path of this machine.
SHOWN_DEFAULT = "shown_default"


class Section(BaseModel):
    """A group of settings: immutable once read, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def comma_separated(value: Any) -> Any:
    """A comma-separated string as a tuple of its non-empty, stripped entries; anything else unchanged
    (a field validator's `before` step, with the field marked `NoDecode` so the environment's text reaches it)."""
    if isinstance(value, str):
        return tuple(entry.strip() for entry in value.split(",") if entry.strip())
    return value
