"""The formats the design names that are not served: an H2O MOJO and a PFA document are refused with why and
what to do instead, whatever type a PFA document's descriptor claims; the formats served are not mistaken
for them."""

from __future__ import annotations

import json

import pytest
from support.hostile_pmml import quadrant_tree

from flows.adapters.scorers import ModelLoadError, build_scorer
from flows.adapters.scorers.archive import pack_file
from flows.core.admission.unserved_formats import looks_like_pfa
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.shipped import SHIPPED_MODELS_DIR

PFA_JSON = json.dumps(
    {
        "input": {"type": "record", "name": "Pair", "fields": [{"name": "users", "type": "double"}]},
        "output": "double",
        "action": [{"+": ["input.users", 1]}],
    }
).encode()
PFA_YAML = b"input: double\noutput: double\naction:\n  - {+: [input, 1]}\n"


def refusal(descriptor: ModelDescriptor) -> str:
    with pytest.raises(ModelLoadError) as refused:
        build_scorer(descriptor)
    return str(refused.value)


def test_an_h2o_mojo_is_refused_naming_the_conversion_to_onnx():
    reason = refusal(ModelDescriptor("mojo", "", ModelType.H2O, b"PK\x03\x04 a MOJO zip"))
    assert "H2O MOJO" in reason and "onnxmltools.convert_h2o" in reason and "docs/formats.md" in reason


@pytest.mark.parametrize("claimed", [ModelType.PMML, ModelType.ONNX, ModelType.UNKNOWN])
@pytest.mark.parametrize("document", [PFA_JSON, PFA_YAML], ids=["json", "yaml"])
def test_a_pfa_document_is_refused_with_why_whatever_its_descriptor_claims(claimed, document):
    reason = refusal(ModelDescriptor("pfa", "", claimed, document))
    assert "PFA document" in reason and "exec()" in reason and "ONNX or PMML" in reason


def test_the_served_formats_are_not_taken_for_pfa():
    assert not looks_like_pfa(quadrant_tree())
    assert not looks_like_pfa(pack_file(SHIPPED_MODELS_DIR / "1-onnx" / "model.onnx", "model.onnx"))
    assert not looks_like_pfa(json.dumps({"input": "double", "output": "double"}).encode())  # no action
