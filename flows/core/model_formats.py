"""The embedded model formats: how an unpacking job names each, and the file that marks a directory as one.

A light module (no numpy, no onnx) so that the unpacking child, the model generator and the tools agree on
the names without importing the runtimes.
"""

from __future__ import annotations

SAVED_MODEL = "savedmodel"
ONNX = "onnx"
PMML = "pmml"
SAVED_MODEL_FILE = "saved_model.pb"
ONNX_MODEL_FILE = "model.onnx"
PMML_MODEL_FILE = "model.pmml"
