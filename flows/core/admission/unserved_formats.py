"""The formats the design names that this flow does not run in process, answered with why and what to do.

The design treats models as data in four formats: TensorFlow graphs, PMML, PFA and H2O MOJO. TensorFlow, ONNX
and PMML are served. An H2O MOJO has no scorer without a JVM; its tree ensembles convert to ONNX
(docs/formats.md, "H2O MOJO"). PFA's only Python engine (titus2) is unmaintained, does not import on Python
3.11 with numpy 2, compiles the document to Python source that it runs with `exec()` (a type's `doc` string
reached that source unescaped) and has no memory limit; so a document that is PFA is refused, whatever type
its descriptor claims, rather than handed to a scorer that would fail on it with a less useful reason.
"""

from __future__ import annotations

import re

from flows.core.descriptors import ModelDescriptor, ModelType

H2O_REFUSAL = (
    "an H2O MOJO is not run in process (its scorer needs a JVM): convert it to ONNX with "
    "onnxmltools.convert_h2o, fit it to the contract with serving-onnx-wrap and publish the ONNX model "
    "(docs/formats.md, 'H2O MOJO')"
)
PFA_REFUSAL = (
    "this is a PFA document, which is not served: the one Python engine for PFA (titus2) is unmaintained and "
    "runs the document's text with exec(); export the model as ONNX or PMML (docs/formats.md, 'PFA')"
)
PFA_HEAD_BYTES = 64 * 1024  # PFA's top-level fields open the document: a look at its head is enough
# PFA's required top-level fields, as JSON keys or as YAML keys at the start of a line.
_PFA_FIELDS = (b"input", b"output", b"action")


def unserved_refusal(descriptor: ModelDescriptor) -> str | None:
    """Why `descriptor` names a format this flow does not serve, or None."""
    if descriptor.model_type is ModelType.H2O:
        return H2O_REFUSAL
    if descriptor.model_bytes and looks_like_pfa(descriptor.model_bytes[:PFA_HEAD_BYTES]):
        return PFA_REFUSAL
    return None


def looks_like_pfa(head: bytes) -> bool:
    """Whether `head` (a document's first bytes) opens a PFA document: JSON or YAML holding its three
    required top-level fields. An archive or an ONNX or PMML model never does."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        return all(re.search(rb'"%s"\s*:' % field, text) for field in _PFA_FIELDS)
    return all(re.search(rb"(?m)^%s\s*:" % field, text) for field in _PFA_FIELDS)
