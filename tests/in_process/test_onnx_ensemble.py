"""Ensembles as one model (`serving-onnx-ensemble`): two shipped ONNX twins composed with weights are admitted
like any ONNX model and answer the weighted mean of their members within 1e-6; members that do not fit
together are refused naming why."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from flows.adapters.scorers import build_scorer
from flows.adapters.scorers.archive import pack_file
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.tools import onnx_ensemble
from flows.tools.onnx_ensemble import EnsembleError, compose

TWINS = [SHIPPED_MODELS_DIR / version / "model.onnx" for version in ("1-onnx", "2-onnx")]


def served(path) -> object:
    return build_scorer(ModelDescriptor(path.stem, "", ModelType.ONNX, pack_file(path, "model.onnx")))


def test_a_weighted_ensemble_is_admitted_and_answers_the_weighted_mean_of_its_members(tmp_path):
    output = tmp_path / "ensemble.onnx"
    assert onnx_ensemble.main([*map(str, TWINS), "--weights", "1,3", "-o", str(output)]) == 0
    ensemble, first, second = served(output), served(TWINS[0]), served(TWINS[1])
    rng = np.random.default_rng(5)
    users = rng.integers(0, 1000, 2_000).astype(np.float32)
    products = rng.integers(0, 300, 2_000).astype(np.float32)
    expected = 0.25 * first.score(users, products) + 0.75 * second.score(users, products)
    assert np.abs(ensemble.score(users, products) - expected).max() < 1e-6
    assert ensemble.input_bounds == first.input_bounds  # both members gather from tables of these rows


def test_two_copies_of_one_model_compose_and_answer_as_it_does():
    model = onnx.load_model(str(TWINS[0]))
    feeds = {
        "users": np.arange(50, dtype=np.float32)[:, None],
        "products": np.arange(50, dtype=np.float32)[:, None],
    }
    [alone] = onnxruntime.InferenceSession(model.SerializeToString()).run(["predictions"], feeds)
    twice = onnxruntime.InferenceSession(compose([model, model]).SerializeToString())
    [together] = twice.run(["predictions"], feeds)
    assert np.abs(together - alone).max() < 1e-6


def test_members_that_do_not_fit_together_are_refused_naming_why(tmp_path, capsys):
    model = onnx.load_model(str(TWINS[0]))
    with pytest.raises(EnsembleError, match="two members or more"):
        compose([model])
    with pytest.raises(EnsembleError, match="one non-negative weight per member"):
        compose([model, model], [1.0, -1.0])
    renamed = onnx.load_model(str(TWINS[1]))
    renamed.graph.output[0].name = "scores"
    with pytest.raises(EnsembleError, match=r"member 1 takes .* and returns \['scores'\]"):
        compose([model, renamed])
    other_opset = onnx.load_model(str(TWINS[1]))
    other_opset.opset_import[0].version = 13
    with pytest.raises(EnsembleError, match="different opsets"):
        compose([model, other_opset])
    assert onnx_ensemble.main([str(TWINS[0]), "-o", str(tmp_path / "one.onnx")]) == 2
    assert "two members or more" in capsys.readouterr().err
