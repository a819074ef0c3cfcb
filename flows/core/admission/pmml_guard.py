"""The guard every PMML document passes before an XML library or PMML evaluator sees it.

Whoever can write the models topic writes these bytes. Python's XML parsers expand internal entities (an
`<!ENTITY i "0.9">` placed in an intercept silently changed every prediction), and the evaluator
(`sklearn-pmml-model`) parses with ElementTree, keeps the whole tree, checks no version or namespace and
caps nothing. So one streaming expat pass comes first, in the admission child: it never holds the document,
never declares, expands or fetches an entity (a DOCTYPE is refused on sight, before its internal subset is
read; entity declarations, external references and processing instructions are refused too, should one get
past), and refuses anything outside a narrow shape: UTF-8, a PMML 4.0-4.4 root, one allowed top-level
model, elements outside PMML's namespace only inside an `Extension`, and bounded size, element count,
depth, attribute and text lengths. Measured on 2 cores: a 3.5 MB model (65,545 elements) in ~0.2 s, a
115 MB flood of valid-looking elements refused at its file size before a byte is read, or as a stream at the
element cap in under 2 s, with resident memory unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from xml.parsers import expat

from flows.core.errors import ServingError

PmmlSource = bytes | Path | BinaryIO

PMML_NAMESPACE = re.compile(r"http://www\.dmg\.org/PMML-4_[0-4]")
ALL_MODEL_ELEMENTS = frozenset(
    {
        "AnomalyDetectionModel",
        "AssociationModel",
        "BaselineModel",
        "BayesianNetworkModel",
        "ClusteringModel",
        "GaussianProcessModel",
        "GeneralRegressionModel",
        "MiningModel",
        "NaiveBayesModel",
        "NearestNeighborModel",
        "NeuralNetwork",
        "RegressionModel",
        "RuleSetModel",
        "Scorecard",
        "SequenceModel",
        "SupportVectorMachineModel",
        "TextModel",
        "TimeSeriesModel",
        "TreeModel",
    }
)
TOP_LEVEL_NON_MODELS = frozenset(
    {
        "Header",
        "MiningBuildTask",
        "DataDictionary",
        "TransformationDictionary",
        "Extension",
    }
)
DEFAULT_MODELS = frozenset(
    {
        "TreeModel",
        "MiningModel",
        "RegressionModel",
        "GeneralRegressionModel",
        "NaiveBayesModel",
        "NearestNeighborModel",
        "SupportVectorMachineModel",
        "NeuralNetwork",
    }
)
XINCLUDE_PREFIX = "http://www.w3.org/2001/XInclude "  # refused even inside an Extension
UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
NUMERIC_TYPES = frozenset({"double", "float", "integer"})
TARGET_USAGES = frozenset({"target", "predicted"})  # "predicted": the PMML 3 spelling some tools still emit


class PmmlRefused(ServingError, ValueError):
    """The document is refused; the message names the cause and, where known, the line and column."""


@dataclass(frozen=True)
class PmmlLimits:
    """Caps sized for this flow's models; every one bounds time or memory an attacker could otherwise take."""

    max_bytes: int = 32 * 1024 * 1024
    max_elements: int = 500_000
    max_depth: int = 100
    max_attributes: int = 64
    max_attribute_len: int = 64 * 1024
    max_text_len: int = 4 * 1024 * 1024  # one text run, e.g. an <Array> of SVM coefficients
    chunk_size: int = 64 * 1024
    allowed_versions: frozenset[str] = frozenset({"4.0", "4.1", "4.2", "4.3", "4.4"})
    allowed_models: frozenset[str] = DEFAULT_MODELS


@dataclass(frozen=True)
class DataFieldInfo:
    """One DataDictionary/DataField: what the model expects a field to be."""

    name: str
    optype: str | None
    data_type: str | None


@dataclass(frozen=True)
class MiningFieldInfo:
    """One MiningSchema/MiningField of the top-level model; PMML's default usageType is 'active'."""

    name: str
    usage_type: str


@dataclass(frozen=True)
class PmmlSummary:
    """What the guard saw, enough for a contract check without parsing the document again."""

    version: str
    namespace: str
    model_type: str
    function_name: str | None
    segmentation: str | None  # a MiningModel's multipleModelMethod (how its segments combine)
    data_fields: tuple[DataFieldInfo, ...]
    mining_fields: tuple[MiningFieldInfo, ...]
    element_count: int
    max_depth: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> PmmlSummary:
        """The summary the admission child sent back with its verdict."""
        return cls(
            **{
                **fields,
                "data_fields": tuple(DataFieldInfo(**item) for item in fields["data_fields"]),
                "mining_fields": tuple(MiningFieldInfo(**item) for item in fields["mining_fields"]),
            }
        )


@dataclass
class _State:
    """Mutable pass state; kept apart from the handlers so they stay small."""

    namespace: str = ""
    prefix: str = "\0"  # namespace + expat's separator; matches no name until the root sets it
    version: str = ""
    path: list[str] = field(default_factory=list)  # local names from the root to the open element
    extension_at: int = 0  # depth of the open Extension, whose content may be in any namespace
    max_depth: int = 0
    elements: int = 0
    text_len: int = 0
    model_type: str = ""
    function_name: str | None = None
    segmentation: str | None = None
    has_dictionary: bool = False
    has_schema: bool = False
    data_fields: dict[str, DataFieldInfo] = field(default_factory=dict)
    mining_fields: dict[str, MiningFieldInfo] = field(default_factory=dict)


class _Guard:
    """Expat handlers that refuse as early as the offending token is seen."""

    def __init__(self, limits: PmmlLimits) -> None:
        self.limits = limits
        self.state = _State()
        self.parser = expat.ParserCreate(namespace_separator=" ")
        parser = self.parser
        parser.buffer_text = True  # fewer handler calls; text runs still arrive in bounded pieces
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity_decl
        parser.UnparsedEntityDeclHandler = self._entity_decl
        parser.ExternalEntityRefHandler = self._external_entity
        parser.SkippedEntityHandler = self._skipped_entity
        parser.ProcessingInstructionHandler = self._processing_instruction
        parser.XmlDeclHandler = self._xml_decl
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text

    def refuse(self, cause: str) -> PmmlRefused:
        """Build the refusal with expat's current position, which is the offending token's."""
        return PmmlRefused(
            f"{cause} at line {self.parser.CurrentLineNumber}, column {self.parser.CurrentColumnNumber + 1}"
        )

    def _doctype(self, name: str, *_: object) -> None:
        raise self.refuse(f"DOCTYPE declaration <!DOCTYPE {name}> refused (no DTDs, no entities)")

    def _entity_decl(self, name: str, *_: object) -> None:
        raise self.refuse(f"entity declaration {name!r} refused")

    def _external_entity(
        self, _context: str | None, _base: str | None, system_id: str | None, _public_id: str | None
    ) -> int:
        raise self.refuse(f"external entity reference {system_id!r} refused")

    def _skipped_entity(self, name: str, _is_parameter: int) -> None:
        raise self.refuse(f"entity reference &{name}; refused")

    def _processing_instruction(self, target: str, _data: str) -> None:
        raise self.refuse(f"processing instruction <?{target}?> refused")

    def _xml_decl(self, _version: str, encoding: str | None, _standalone: int) -> None:
        if encoding is not None and encoding.lower() not in UTF8_NAMES:
            raise self.refuse(f"encoding {encoding!r} refused (UTF-8 only)")

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        """Runs once per element, so the common path is kept to a few comparisons."""
        state, limits = self.state, self.limits
        state.elements += 1
        state.text_len = 0
        depth = len(state.path) + 1
        if state.elements > limits.max_elements:
            raise self.refuse(f"more than {limits.max_elements} elements")
        if depth > limits.max_depth:
            raise self.refuse(f"nesting deeper than {limits.max_depth}")
        if attrs and (
            len(attrs) > limits.max_attributes or max(map(len, attrs.values())) > limits.max_attribute_len
        ):
            raise self._oversized(attrs)
        if depth == 1:
            local = self._root(name, attrs)
        elif name.startswith(state.prefix):
            local = name[len(state.prefix) :]
        elif name.startswith(XINCLUDE_PREFIX) or not state.extension_at:
            namespace, _, local = name.rpartition(" ")
            raise self.refuse(f"element {local!r} in namespace {namespace!r} outside an Extension")
        else:
            local = name.rpartition(" ")[2]
        state.path.append(local)
        state.max_depth = max(state.max_depth, depth)
        if state.extension_at:
            return
        if local == "Extension":
            state.extension_at = depth
        elif depth == 2:
            self._top_level(local, attrs)
        elif depth <= 4:
            self._field(attrs)

    def _oversized(self, attrs: dict[str, str]) -> PmmlRefused:
        if len(attrs) > self.limits.max_attributes:
            return self.refuse(f"element has {len(attrs)} attributes (max {self.limits.max_attributes})")
        key, value = max(attrs.items(), key=lambda item: len(item[1]))
        return self.refuse(f"attribute {key!r} is {len(value)} chars (max {self.limits.max_attribute_len})")

    def _field(self, attrs: dict[str, str]) -> None:
        """Record PMML/DataDictionary/DataField and PMML/<model>/MiningSchema/MiningField, nothing deeper."""
        state = self.state
        path = state.path[1:]
        if path == ["DataDictionary", "DataField"]:
            name = self._field_name("DataField", attrs, state.data_fields)
            state.data_fields[name] = DataFieldInfo(name, attrs.get("optype"), attrs.get("dataType"))
        elif path == [state.model_type, "Segmentation"]:
            state.segmentation = attrs.get("multipleModelMethod")
        elif path == [state.model_type, "MiningSchema"]:
            if state.has_schema:
                raise self.refuse(f"second MiningSchema in {state.model_type}")
            state.has_schema = True
        elif path == [state.model_type, "MiningSchema", "MiningField"]:
            name = self._field_name("MiningField", attrs, state.mining_fields)
            state.mining_fields[name] = MiningFieldInfo(name, attrs.get("usageType", "active"))

    def _root(self, name: str, attrs: dict[str, str]) -> str:
        namespace, _, local = name.rpartition(" ")
        if local != "PMML" or not PMML_NAMESPACE.fullmatch(namespace):
            raise self.refuse(f"root element {local!r} in namespace {namespace!r} is not PMML 4.x")
        version = attrs.get("version")
        release = re.fullmatch(r"(\d+\.\d+)(\.\d+)?", version or "")  # exporters write 4.4.1 for 4.4
        if release is None or release.group(1) not in self.limits.allowed_versions:
            raise self.refuse(f"PMML version {version!r} not in {sorted(self.limits.allowed_versions)}")
        state = self.state
        state.namespace, state.prefix, state.version = namespace, namespace + " ", release.group(0)
        return local

    def _top_level(self, local: str, attrs: dict[str, str]) -> None:
        state, allowed = self.state, self.limits.allowed_models
        if local in ALL_MODEL_ELEMENTS:
            if state.model_type:
                raise self.refuse(f"second top-level model element {local} (first was {state.model_type})")
            if local not in allowed:
                raise self.refuse(f"model element {local} not allowed (allowed: {sorted(allowed)})")
            state.model_type, state.function_name = local, attrs.get("functionName")
        elif local == "DataDictionary":
            if state.has_dictionary:
                raise self.refuse("second DataDictionary")
            state.has_dictionary = True
        elif local not in TOP_LEVEL_NON_MODELS:
            raise self.refuse(f"unknown top-level element {local}")

    def _field_name(self, local: str, attrs: dict[str, str], seen: Mapping[str, object]) -> str:
        name = attrs.get("name")
        if not name:
            raise self.refuse(f"{local} without a name")
        if name in seen:
            raise self.refuse(f"duplicate {local} {name!r}")
        return name

    def _end(self, _name: str) -> None:
        state = self.state
        if state.extension_at == len(state.path):
            state.extension_at = 0
        state.path.pop()
        state.text_len = 0

    def _text(self, data: str) -> None:
        self.state.text_len += len(data)
        if self.state.text_len > self.limits.max_text_len:
            raise self.refuse(f"text run longer than {self.limits.max_text_len} chars")

    def summary(self) -> PmmlSummary:
        """Checks that need the whole document, then the summary."""
        state = self.state
        if not state.model_type:
            raise PmmlRefused("no model element under PMML")
        if not state.has_dictionary:
            raise PmmlRefused("no DataDictionary under PMML")
        if not state.has_schema:
            raise PmmlRefused(f"{state.model_type} has no MiningSchema")
        return PmmlSummary(
            version=state.version,
            namespace=state.namespace,
            model_type=state.model_type,
            function_name=state.function_name,
            segmentation=state.segmentation,
            data_fields=tuple(state.data_fields.values()),
            mining_fields=tuple(state.mining_fields.values()),
            element_count=state.elements,
            max_depth=state.max_depth,
        )


def _chunks(data: PmmlSource, limits: PmmlLimits) -> Iterator[bytes | memoryview]:
    """Yield the document in chunk_size pieces, refusing once max_bytes is passed, before expat sees more."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        if len(view) > limits.max_bytes:
            raise PmmlRefused(f"document is {len(view)} bytes (max {limits.max_bytes})")
        for start in range(0, len(view), limits.chunk_size):
            yield view[start : start + limits.chunk_size]
        return
    if isinstance(data, Path):
        with open(data, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > limits.max_bytes:
                raise PmmlRefused(f"file is {size} bytes (max {limits.max_bytes})")
            yield from _chunks(stream, limits)
        return
    total = 0
    while chunk := data.read(limits.chunk_size):
        total += len(chunk)
        if total > limits.max_bytes:
            raise PmmlRefused(f"document exceeds {limits.max_bytes} bytes")
        yield chunk


def check_pmml(data: PmmlSource, limits: PmmlLimits = PmmlLimits()) -> PmmlSummary:
    """Vet untrusted PMML in one streaming expat pass; return its summary or raise PmmlRefused."""
    guard = _Guard(limits)
    first = True
    try:
        for chunk in _chunks(data, limits):
            if first and (bytes(chunk[:2]) in (b"\xfe\xff", b"\xff\xfe") or b"\x00" in bytes(chunk[:4])):
                raise PmmlRefused("UTF-16/32 document refused (UTF-8 only)")
            first = False
            guard.parser.Parse(chunk, False)
        guard.parser.Parse(b"", True)
    except expat.ExpatError as error:
        where = f"line {error.lineno}, column {error.offset + 1}"
        raise PmmlRefused(f"malformed XML: {expat.errors.messages[error.code]} at {where}") from None
    return guard.summary()


def check_contract(summary: PmmlSummary, inputs: tuple[str, ...] = ("users", "products")) -> None:
    """Refuse a model the flow cannot feed: active fields must be exactly `inputs`, all numeric DataFields,
    and there must be exactly one continuous numeric target, because the flow sends float32 inputs and reads
    one number back."""
    fields = {f.name: f for f in summary.data_fields}
    active = sorted(f.name for f in summary.mining_fields if f.usage_type == "active")
    if active != sorted(inputs):
        raise PmmlRefused(
            f"active MiningSchema fields {active} are not the contract's inputs {sorted(inputs)}"
        )
    for name in active:
        found = fields.get(name)
        if found is None or found.data_type not in NUMERIC_TYPES:
            raise PmmlRefused(f"input {name!r} is not a numeric DataField (found {found})")
    targets = [f.name for f in summary.mining_fields if f.usage_type in TARGET_USAGES]
    if len(targets) != 1:
        raise PmmlRefused(f"expected one target MiningField, found {targets}")
    extra = sorted(set(fields) - set(inputs) - {targets[0]})
    if extra:
        raise PmmlRefused(
            f"DataDictionary fields {extra} are neither the contract's inputs nor the target: the evaluator "
            "would expect them as inputs"
        )
    target = fields.get(targets[0])
    if target is None or target.optype != "continuous" or target.data_type not in NUMERIC_TYPES:
        raise PmmlRefused(
            f"target {targets[0]!r} is not a continuous double/float/integer DataField (found {target})"
        )
