"""The PMML guard (`flows.core.admission.pmml_guard`): each hostile document is refused with its cause
named, no file is read and no URL fetched; a sane document passes with its summary.

Side effects are watched three ways: a CPython audit hook (every open() and socket connect in the process),
the marker file's atime (set older than its mtime so that relatime records any read), and a loopback HTTP
server's request count. Positive controls run the same payloads through xml.sax with external entities on,
which shows the payloads are live and that each detector would have seen a read or a fetch. The caps are
what bound the time and memory a document can take (no wall-clock assertion: the machine may be loaded);
the figures measured are in docs/formats.md.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
import xml.sax
import xml.sax.handler
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import hostile_pmml as hostile
from support.jobs import REPO
from support.side_effects import CountingServer, counting_server, unread_marker

from flows.core.admission import pmml_guard
from flows.core.admission.pmml_guard import (
    DataFieldInfo,
    MiningFieldInfo,
    PmmlLimits,
    PmmlRefused,
    PmmlSource,
    check_contract,
    check_pmml,
)

WATCHED_EVENTS = frozenset({"open", "socket.connect", "urllib.Request"})
_recording: list[list[tuple[str, tuple[object, ...]]]] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    """Audit hooks cannot be removed, so this one records only while a `watch` block is open."""
    if _recording and event in WATCHED_EVENTS:
        _recording[-1].append((event, args))


sys.addaudithook(_audit)


@pytest.fixture
def watch() -> Iterator[Callable[[], list[tuple[str, tuple[object, ...]]]]]:
    """Return a function that starts recording audit events; recording stops with the test."""
    events: list[tuple[str, tuple[object, ...]]] = []

    def start() -> list[tuple[str, tuple[object, ...]]]:
        _recording.append(events)
        return events

    yield start
    if _recording:
        _recording.clear()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return unread_marker(tmp_path)


@pytest.fixture
def server() -> Iterator[CountingServer]:
    with counting_server() as running:
        yield running


def refused(data: PmmlSource, cause: str, limits: PmmlLimits | None = None) -> str:
    """Assert check_pmml refuses `data` with a message matching `cause`."""
    with pytest.raises(PmmlRefused) as caught:
        check_pmml(data, limits or PmmlLimits())
    assert re.search(cause, str(caught.value)), str(caught.value)
    return str(caught.value)


def _sax_resolving(data: bytes) -> str:
    """What a careless consumer does: a parser that resolves external entities. Returns the text it saw."""
    seen: list[str] = []

    class Collect(xml.sax.handler.ContentHandler):
        def characters(self, content: str) -> None:
            seen.append(content)

    parser = xml.sax.make_parser()
    parser.setFeature(xml.sax.handler.feature_external_ges, True)
    parser.setContentHandler(Collect())
    parser.parse(io.BytesIO(data))
    return "".join(seen)


def test_sane_tree_passes_with_its_summary() -> None:
    summary = check_pmml(hostile.sane_tree())
    assert (summary.version, summary.model_type, summary.function_name) == ("4.4", "TreeModel", "regression")
    assert summary.data_fields == (
        DataFieldInfo("users", "continuous", "float"),
        DataFieldInfo("products", "continuous", "float"),
        DataFieldInfo("rating", "continuous", "double"),
    )
    assert summary.mining_fields == (
        MiningFieldInfo("users", "active"),
        MiningFieldInfo("products", "active"),
        MiningFieldInfo("rating", "target"),
    )
    assert (summary.element_count, summary.max_depth, summary.segmentation) == (17, 5, None)
    check_contract(summary)


def test_mining_field_usage_defaults_to_active() -> None:
    data = hostile.sane_tree().replace(b' usageType="active"', b"")
    assert [f.usage_type for f in check_pmml(data).mining_fields] == ["active", "active", "target"]


def test_external_file_entity_is_never_read(marker: Path, watch: Callable[[], list]) -> None:
    data = hostile.external_file_entity(str(marker))
    atime = marker.stat().st_atime_ns
    events = watch()
    refused(data, r"^DOCTYPE declaration .* at line 2, column \d+")
    assert events == []  # not one open() of any path, not one connect
    assert marker.stat().st_atime_ns == atime
    assert "SECRET-MARKER" in _sax_resolving(data)  # control: the payload is live ...
    assert any(event == "open" and str(marker) in str(args[0]) for event, args in events)  # ... the hook too
    assert marker.stat().st_atime_ns != atime  # ... and so does the atime


def test_external_url_entity_is_never_fetched(server: CountingServer, watch: Callable[[], list]) -> None:
    data = hostile.external_url_entity(server.url("secret.txt"))
    events = watch()
    refused(data, r"^DOCTYPE declaration")
    assert events == [] and server.requests == []
    assert "REMOTE-MARKER" in _sax_resolving(data)  # control: a resolving parser fetches it
    assert server.requests == ["/secret.txt"]
    assert any(event == "socket.connect" for event, _ in events)


def test_external_dtd_is_never_fetched(server: CountingServer, watch: Callable[[], list]) -> None:
    events = watch()
    refused(hostile.external_dtd(server.url("evil.dtd")), r"^DOCTYPE declaration")
    assert events == [] and server.requests == []


@pytest.mark.parametrize(
    "make", [hostile.billion_laughs, hostile.quadratic_blowup, hostile.internal_entity_coefficient]
)
def test_entity_expansion_is_refused_at_the_doctype(make: Callable[[], bytes]) -> None:
    refused(make(), r"^DOCTYPE declaration <!DOCTYPE PMML> refused .* at line 2")


def test_entity_handlers_hold_without_the_doctype_refusal(
    monkeypatch: pytest.MonkeyPatch, server: CountingServer, marker: Path
) -> None:
    """Second line: even with the DOCTYPE handler gone, no entity is declared, expanded or fetched."""
    monkeypatch.setattr(pmml_guard._Guard, "_doctype", lambda self, *_: None)
    refused(hostile.billion_laughs(), r"^entity declaration 'lol0' refused at line 2")
    refused(hostile.internal_entity_coefficient(), r"^entity declaration 'i' refused")
    refused(hostile.external_file_entity(str(marker)), r"^entity declaration 'secret' refused")
    skipped = hostile.external_dtd(server.url("evil.dtd")).replace(
        b"<Header", b"<Extension>&x;</Extension><Header"
    )
    refused(skipped, r"^entity reference &x; refused")
    assert server.requests == []


def test_deep_nesting_is_refused() -> None:
    refused(hostile.deep_nesting(20_000), r"^nesting deeper than 100 at line \d+, column \d+")


def test_scorecard_is_refused_by_name() -> None:
    refused(hostile.scorecard(), r"^model element Scorecard not allowed .* at line 9, column 3")


def test_contract_refuses_foreign_fields() -> None:
    with pytest.raises(PmmlRefused, match=r"active MiningSchema fields \['age', 'income'\] are not"):
        check_contract(check_pmml(hostile.foreign_fields()))


def test_contract_refuses_categorical_target() -> None:
    with pytest.raises(PmmlRefused, match=r"target 'rating' is not a continuous .*optype='categorical'"):
        check_contract(check_pmml(hostile.categorical_target()))


def test_contract_refuses_missing_or_extra_targets() -> None:
    no_target = hostile.document(schema=hostile.CONTRACT_SCHEMA[:2])
    with pytest.raises(PmmlRefused, match=r"expected one target MiningField, found \[\]"):
        check_contract(check_pmml(no_target))


def test_contract_refuses_string_inputs() -> None:
    fields = (("users", "categorical", "string"),) + hostile.CONTRACT_FIELDS[1:]
    with pytest.raises(PmmlRefused, match=r"input 'users' is not a numeric DataField"):
        check_contract(check_pmml(hostile.document(fields=fields)))


SANE = hostile.sane_tree()
SHAPE_CASES = {
    "malformed": (SANE.replace(b"</TreeModel>", b"</Tree>"), r"^malformed XML: mismatched tag at line \d+"),
    "truncated": (SANE[:-20], r"^malformed XML: (unclosed token|no element found)"),
    "undefined entity": (SANE.replace(b'"0.5"', b'"&x;"'), r"^malformed XML: undefined entity"),
    "processing instruction": (
        SANE.replace(b"<PMML", b"<?xml-stylesheet href='x'?><PMML"),
        r"^processing instruction <\?xml-stylesheet\?> refused at line 2",
    ),
    "wrong root": (
        SANE.replace(b"<PMML", b"<Model").replace(b"</PMML>", b"</Model>"),
        r"^root element 'Model' in namespace .* is not PMML 4.x",
    ),
    "PMML 3 namespace": (SANE.replace(b"PMML-4_4", b"PMML-3_2"), r"is not PMML 4.x"),
    "no namespace": (SANE.replace(b' xmlns="http://www.dmg.org/PMML-4_4"', b""), r"namespace '' is not PMML"),
    "version": (SANE.replace(b'version="4.4"', b'version="5.0"'), r"^PMML version '5.0' not in"),
    "no version": (SANE.replace(b' version="4.4"', b""), r"^PMML version None not in"),
    "no model": (re.sub(rb"(?s)<TreeModel.*</TreeModel>", b"", SANE), r"^no model element under PMML$"),
    "two models": (
        SANE.replace(b"</PMML>", b"<RegressionModel/></PMML>"),
        r"^second top-level model element RegressionModel \(first was TreeModel\)",
    ),
    "no data dictionary": (
        re.sub(rb"(?s)<DataDictionary.*</DataDictionary>", b"", SANE),
        r"^no DataDictionary under PMML$",
    ),
    "no mining schema": (
        re.sub(rb"(?s)<MiningSchema>.*</MiningSchema>", b"", SANE),
        r"^TreeModel has no MiningSchema$",
    ),
    "unknown top level": (
        SANE.replace(b"<Header", b"<Script/><Header"),
        r"^unknown top-level element Script",
    ),
    "foreign namespace": (
        SANE.replace(b"<Header", b'<x:Header xmlns:x="urn:x"/><Header'),
        r"^element 'Header' in namespace 'urn:x' outside an Extension",
    ),
    "xinclude in extension": (
        SANE.replace(
            b"<Header",
            b'<Extension><xi:include href="/etc/passwd" xmlns:xi='
            b'"http://www.w3.org/2001/XInclude"/></Extension><Header',
        ),
        r"^element 'include' in namespace",
    ),
    "duplicate field": (
        SANE.replace(b'name="products" optype', b'name="users" optype'),
        r"^duplicate DataField 'users'",
    ),
    "long attribute": (
        SANE.replace(b'description="recommender"', b'description="' + b"x" * 70_000 + b'"'),
        r"^attribute 'description' is 70000 chars \(max 65536\)",
    ),
    "long text": (
        SANE.replace(b"<Header", b"<Extension>" + b"y" * 5_000_000 + b"</Extension><Header"),
        r"^text run longer than 4194304 chars",
    ),
    "utf-16": (SANE.decode().replace("UTF-8", "UTF-16").encode("utf-16"), r"^UTF-16/32 document refused"),
    "latin-1 declared": (SANE.replace(b"UTF-8", b"ISO-8859-1"), r"^encoding 'ISO-8859-1' refused"),
}


@pytest.mark.parametrize("case", SHAPE_CASES)
def test_shape_is_enforced(case: str) -> None:
    data, cause = SHAPE_CASES[case]
    refused(data, cause)


def test_extension_may_hold_foreign_elements() -> None:
    data = SANE.replace(b"<Header", b'<Extension><x:Meta xmlns:x="urn:x" a="1"/></Extension><Header')
    assert check_pmml(data).model_type == "TreeModel"


def test_byte_cap_on_bytes() -> None:
    refused(SANE, rf"^document is {len(SANE)} bytes \(max 500\)", PmmlLimits(max_bytes=500))


@pytest.fixture(scope="module")
def flood(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 12 MB of valid-looking leaf Nodes (the in-process tests send 100 MB through the whole
    admission)."""
    path = tmp_path_factory.mktemp("flood") / "flood.pmml"
    assert hostile.write_many_nodes(str(path), nodes=120_000) > 12 * 10**6
    return path


def test_flood_refused_by_file_size(flood: Path) -> None:
    refused(flood, r"^file is \d{8} bytes \(max 8388608\)$", PmmlLimits(max_bytes=8 << 20))


def test_flood_stream_refused_by_byte_cap(flood: Path) -> None:
    with open(flood, "rb") as stream:  # a stream has no size up front: the running count must stop it
        refused(
            stream, r"^document exceeds 2097152 bytes$", PmmlLimits(max_bytes=2 << 20, max_elements=10**9)
        )


def test_flood_refused_by_element_cap(flood: Path) -> None:
    refused(flood, r"^more than 50000 elements at line 25009", PmmlLimits(max_elements=50_000))


def test_flood_memory_stays_flat(flood: Path) -> None:
    """Stream the flood up to the element cap; peak resident memory may not grow by half its size."""
    script = textwrap.dedent(f"""
        import resource
        from flows.core.admission import pmml_guard
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            pmml_guard.check_pmml(open({str(flood)!r}, "rb"), pmml_guard.PmmlLimits(max_elements=100_000))
        except pmml_guard.PmmlRefused as refusal:
            assert "more than 100000 elements" in str(refusal), refusal
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True, text=True
    )
    assert int(done.stdout) < 4 * 1024  # KiB: the guard holds no more than a chunk and a path


def test_large_sane_tree_passes(tmp_path: Path) -> None:
    path = tmp_path / "sane.pmml"
    assert 3 * 10**6 < hostile.write_sane_large(str(path)) < 4 * 10**6
    summary = check_pmml(path)
    assert (summary.element_count, summary.max_depth) == (65_545, 18)
    check_contract(summary)


def test_a_release_number_after_the_version_is_taken_and_a_mining_model_says_how_it_combines() -> None:
    data = SANE.replace(b'version="4.4"', b'version="4.4.1"').replace(
        b"</MiningSchema>", b'</MiningSchema><Segmentation multipleModelMethod="sum"/>'
    )
    summary = check_pmml(data.replace(b"TreeModel", b"MiningModel"))
    assert (summary.version, summary.model_type, summary.segmentation) == ("4.4.1", "MiningModel", "sum")


def test_contract_refuses_data_fields_besides_the_inputs_and_the_target() -> None:
    fields = (*hostile.CONTRACT_FIELDS, ("age", "continuous", "double"))
    with pytest.raises(PmmlRefused, match=r"DataDictionary fields \['age'\] are neither"):
        check_contract(check_pmml(hostile.document(fields=fields)))


def test_a_summary_survives_the_trip_from_the_admission_child() -> None:
    summary = check_pmml(SANE)
    assert pmml_guard.PmmlSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary
