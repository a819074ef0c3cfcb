"""Write a scikit-learn regressor as a PMML document the flow admits (`serving-train-model --format pmml`).

The writing is nyoka's (Apache-2.0, pure Python; the `[pmml-train]` install extra): it covers scikit-learn's
trees, forests, gradient boosting and linear models. Its header is replaced by one of ours: nyoka stamps
every document with its own copyright line and the time of writing, so two exports of the same model would
differ byte for byte, and the shipped model would carry a copyright that is not its author's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from flows.core.errors import ServingError
from flows.core.model_formats import PMML_MODEL_FILE
from flows.core.scorer import INPUTS

INSTALL = "pip install 'bytewax-model-serving[pmml-train]'"
TARGET = "rating"


class PmmlWriterMissing(ServingError):
    """nyoka is not installed; the message says how to install it."""


def write_pmml(estimator: Any, directory: Path, description: str) -> Path:
    """Write the fitted regressor `estimator` (features: the contract's inputs, in their order) to
    `directory/model.pmml`; return the directory."""
    try:
        from nyoka import skl_to_pmml
        from sklearn.pipeline import Pipeline
    except ImportError:
        raise PmmlWriterMissing(f"writing PMML needs nyoka: {INSTALL}") from None
    directory.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        written = Path(scratch) / PMML_MODEL_FILE
        skl_to_pmml(Pipeline([("model", estimator)]), list(INPUTS), TARGET, str(written))
        tree = ElementTree.parse(written)  # our own output, just written: not a document from outside
    namespace = tree.getroot().tag.partition("}")[0].lstrip("{")
    ElementTree.register_namespace("", namespace)
    header = tree.getroot().find(f"{{{namespace}}}Header")
    assert header is not None, "nyoka always writes a Header"
    header.attrib.clear()
    header.set("description", description)
    for stamp in header.findall(f"{{{namespace}}}Timestamp"):
        header.remove(stamp)
    tree.write(directory / PMML_MODEL_FILE, encoding="UTF-8", xml_declaration=True)
    return directory
