"""The settings reference table, generated from `flows.settings.Settings` (its defaults and descriptions).

`python -m flows.tools.settings_table` prints the table; `--write` puts it into docs/configuration.md,
between its two markers; `--check` exits 1 if the file is not what the settings say (the test suite runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic.fields import FieldInfo

from flows.settings import SHOWN_DEFAULT, Settings

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BEGIN = "<!-- settings table: generated from flows/settings.py by python -m flows.tools.settings_table --write -->"
END = "<!-- end of the generated settings table -->"


def shown_default(field: FieldInfo) -> str:
    """A field's default as the table shows it: the value in backquotes, or words for what has none."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if SHOWN_DEFAULT in extra:
        return str(extra[SHOWN_DEFAULT])
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def table() -> str:
    """The Markdown table of every setting: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `SERVING_{name.upper()}` | {shown_default(field)} | {meaning} |")
    return "\n".join(rows)


def with_table(document: str) -> str:
    """`document` with the text between the markers replaced by the generated table."""
    head, rest = document.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="settings_table", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"rewrite the table in {REFERENCE}")
    action.add_argument("--check", action="store_true", help=f"exit 1 if {REFERENCE} is not in step")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        print(table())
        return 0
    document = REFERENCE.read_text(encoding="utf-8")
    generated = with_table(document)
    if args.check:
        if generated != document:
            print(f"{REFERENCE} is not in step with flows/settings.py: run --write", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(generated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
