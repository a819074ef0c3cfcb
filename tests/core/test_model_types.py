"""SERVING_MODEL_TYPES: a deployment serves the model types it names, and refuses the others before anything
is loaded, so their runtime is never imported (this module runs without TensorFlow: tests/project checks)."""

from __future__ import annotations

import pytest

from flows.adapters.sources.generators import shipped_model
from flows.core.admission.policy import AdmissionPolicy, parse_model_types
from flows.core.descriptors import ModelType
from flows.core.errors import ConfigurationError
from flows.core.scorer import ModelLoadError, build_scorer
from flows.core.shipped import SHIPPED_MODELS_DIR

ONNX_ONLY = AdmissionPolicy(types=(ModelType.ONNX,))


def test_a_type_not_named_is_refused_with_the_setting_and_a_named_one_is_served() -> None:
    with pytest.raises(ModelLoadError) as refused:
        build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1"), ONNX_ONLY)
    assert refused.value.reason == "model type TENSORFLOWSAVED is not served here (SERVING_MODEL_TYPES=ONNX)"
    scorer = build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1-onnx"), ONNX_ONLY)
    assert scorer.source == "embedded:onnx"
    scorer.close()


def test_the_setting_names_served_types_in_any_case_and_nothing_else() -> None:
    assert parse_model_types(" onnx, PMML ,") == (ModelType.ONNX, ModelType.PMML)
    for wrong, reason in [
        ("TORCH", "model type 'TORCH' is not one this flow serves"),
        ("H2O", "model type 'H2O' is not one this flow serves"),  # answered with why, never served
        ("UNKNOWN", "model type 'UNKNOWN' is not one this flow serves"),
        (" , ", "no model type given"),
    ]:
        with pytest.raises(ConfigurationError, match=reason):
            parse_model_types(wrong)
