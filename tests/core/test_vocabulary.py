"""The flow's words are typed (flows.core.vocabulary), and its exceptions share one root
(flows.core.errors)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

from flows.core.events import ChallengerReport, ModelEvent
from flows.core.vocabulary import ClosedBy, EventKind
from flows.wire.avro import EVENT, REPORT

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def test_an_event_kind_is_a_member_and_still_reads_as_its_string():
    event = ModelEvent("accepted", "m")
    assert event.kind is EventKind.ACCEPTED and event.kind == "accepted"
    assert f"{event.kind}" == "accepted" and str(event) == "model 'm' accepted"
    assert EVENT.decode(EVENT.encode(ModelEvent(EventKind.DRIFT, "m"))).kind is EventKind.DRIFT


def test_a_kind_this_version_does_not_know_stays_the_string_it_was():
    assert ModelEvent("from-a-newer-flow", "m").kind == "from-a-newer-flow"


def test_a_report_closed_by_round_trips_as_a_member():
    report = ChallengerReport("b", "a", "shadow", 0.5, "shard-001", 3, ClosedBy.PROMOTED,
                              100, 50, 1, 49, 300, 5, 0.8, 0.05, 1.5, 1.25, 1, 2)  # fmt: skip
    decoded = REPORT.decode(REPORT.encode(report))
    assert decoded == report and decoded.closed_by == ClosedBy.PROMOTED


def test_every_exception_the_flow_defines_is_a_serving_error():
    """Read from the source, so no module runs: a class deriving from an exception must name ServingError."""
    strays = []
    for path in FLOWS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef) or node.name == "ServingError":
                continue
            bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
            if bases & {"Exception", "ValueError", "RuntimeError", "OSError"} and "ServingError" not in bases:
                strays.append(f"{path.relative_to(FLOWS)}:{node.name}")
    assert strays == []


# Raised because Python's protocols ask for them: a module's `__getattr__`, a sequence's `__getitem__`, a
# method a subclass must provide.
PROTOCOL_ERRORS = {"AttributeError", "IndexError", "NotImplementedError"}
BUILT_IN_ERRORS = {
    name for name in dir(builtins) if name.endswith("Error") or name == "Exception"
} - PROTOCOL_ERRORS


def test_the_product_raises_only_its_own_errors():
    """A caller can tell the flow's verdicts from a bug by catching ServingError (`flows/core/errors.py`):
    nothing in the product raises a built-in exception class itself (a bare `raise` re-raises what it
    caught). `flows/testing` is the tests' support library, not the product."""
    strays = []
    for path in FLOWS.rglob("*.py"):
        if path.is_relative_to(FLOWS / "testing"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(raised, ast.Name) and raised.id in BUILT_IN_ERRORS:
                strays.append(f"{path.relative_to(FLOWS)}:{node.lineno}: {raised.id}")
    assert strays == []
