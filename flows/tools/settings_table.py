"""The settings tables, generated from the settings' sections (their fields' defaults and descriptions).

`python -m flows.tools.settings_table` prints docs/configuration.md's table; `--write` puts it there, and
the overview by area at the top of the same file, each between its two markers; `--check` exits 1 if
either is not what the settings say (the test suite runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic.fields import FieldInfo

from flows.core.sections import SHOWN_DEFAULT
from flows.runtime.settings import Settings, variables

REPOSITORY = Path(__file__).resolve().parents[2]
REFERENCE = REPOSITORY / "docs" / "configuration.md"
GENERATED_BY = "generated from flows/runtime/settings.py by python -m flows.tools.settings_table --write"
BEGIN = f"<!-- settings table: {GENERATED_BY} -->"
END = "<!-- end of the generated settings table -->"
AREAS_BEGIN = f"<!-- settings by area: {GENERATED_BY} -->"
AREAS_END = "<!-- end of the generated settings by area -->"
MIB = 1024**2


def shown_default(field: FieldInfo) -> str:
    """A field's default as the reference shows it: the value in backquotes, or words for what has none."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if SHOWN_DEFAULT in extra:
        return str(extra[SHOWN_DEFAULT])
    value = field.get_default(call_default_factory=True)
    if value is None or value == "" or value == ():
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def short_default(field: FieldInfo) -> str:
    """A field's default as the overview by area shows it: bytes in MiB, no backquotes, a default in
    words without its parenthesis."""
    shown = shown_default(field).split(" (")[0].strip("`")
    value = field.get_default(call_default_factory=True)
    if isinstance(value, int) and not isinstance(value, bool) and value >= MIB and value % MIB == 0:
        return f"{value // MIB} MiB"
    return shown


def table() -> str:
    """docs/configuration.md's table of every setting: variable, default, meaning, by section."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for variable in variables().values():
        field = variable.section.model_fields[variable.field]
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{variable.name}` | {shown_default(field)} | {meaning} |")
    return "\n".join(rows)


def area_table() -> str:
    """The overview: one row per section (its title), each variable with its default."""
    rows = ["| area | variables (default) |", "|---|---|"]
    areas: dict[str, list[str]] = {}
    for variable in variables().values():
        area = Settings.model_fields[variable.path[0]].title or variable.path[0]
        default = short_default(variable.section.model_fields[variable.field])
        areas.setdefault(area, []).append(f"`{variable.name}` ({default})")
    rows += [f"| {area} | {', '.join(entries)} |" for area, entries in areas.items()]
    return "\n".join(rows)


def with_table(document: str, generated: str, begin: str = BEGIN, end: str = END) -> str:
    """`document` with the text between the markers `begin` and `end` replaced by `generated`."""
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{generated}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="settings_table", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"rewrite the tables in {REFERENCE}")
    action.add_argument("--check", action="store_true", help="exit 1 if either table is not in step")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        print(table())
        return 0
    document = REFERENCE.read_text(encoding="utf-8")
    updated = with_table(with_table(document, table()), area_table(), AREAS_BEGIN, AREAS_END)
    if updated == document:
        return 0
    if args.check:
        print(f"not in step with the settings: {REFERENCE}: run --write", file=sys.stderr)
        return 1
    REFERENCE.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
