"""The embedded ONNX scorer: the shipped twins score as the SavedModels do, int64 ids are fed as declared,
hostile ONNX files are refused before ONNX Runtime sees them (in seconds, with bounded memory), and the
champion keeps scoring while they are judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.core_runs import (
    judged_beside_a_champion,
    sample_records,
)
from support.hostile_onnx import (
    REFUSED_BEFORE_LOADING,
    REFUSED_BY_THE_PROBE,
    REFUSED_BY_THE_TRIAL,
    archive,
    inline,
    model_bytes,
)
from support.jobs import REPO

from flows.adapters.scorers import ModelLoadError, build_scorer
from flows.adapters.scorers.archive import pack_file
from flows.adapters.sources.generators import shipped_model
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.probe import probe_batch
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.model_formats import ONNX_MODEL_FILE
from flows.core.scorer import InputBounds
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.tools.onnx_export import saved_model_weights

ONNX = ModelType.ONNX


def onnx_model(name: str, payload: bytes) -> ModelDescriptor:
    return ModelDescriptor(name, "", ONNX, payload)


@pytest.mark.parametrize("version", ["1", "2"])
def test_the_shipped_onnx_twins_score_as_the_saved_models_within_1e_5(version):
    saved = build_scorer(shipped_model(SHIPPED_MODELS_DIR, version))
    twin = build_scorer(shipped_model(SHIPPED_MODELS_DIR, f"{version}-onnx"))
    users, products = probe_batch()
    assert twin.source == "embedded:onnx"
    np.testing.assert_allclose(twin.score(users, products), saved.score(users, products), rtol=0, atol=1e-5)
    assert twin.input_bounds == saved.input_bounds == InputBounds(users=1000, products=300)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_saved_model_and_its_onnx_twin_declare_the_same_embedding_tables(version):
    """Each finds the tables its inputs gather from, by the graph's structure: the same rows, so the same
    neighbours in explanations."""
    saved = build_scorer(shipped_model(SHIPPED_MODELS_DIR, version))
    twin = build_scorer(shipped_model(SHIPPED_MODELS_DIR, f"{version}-onnx"))
    assert saved.embeddings is not None and twin.embeddings is not None
    assert twin.embeddings.users.shape == (1000, 50) and twin.embeddings.products.shape == (300, 50)
    np.testing.assert_allclose(twin.embeddings.users, saved.embeddings.users, atol=1e-6)
    np.testing.assert_allclose(twin.embeddings.products, saved.embeddings.products, atol=1e-6)
    for user in (0, 412, 999):
        assert twin.embeddings.similar_users(user, 3) == saved.embeddings.similar_users(user, 3)
        assert user not in twin.embeddings.similar_users(user, 3)
    pmml = build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1-pmml"))
    assert getattr(pmml, "embeddings", None) is None  # a PMML model declares no tables


def test_the_shipped_twins_hold_the_weights_of_the_shipped_saved_models():
    """`serving-train-model --format onnx --from-saved-model` wrote them: the same numbers, not a
    retraining."""
    for version in ("1", "2"):
        weights = saved_model_weights(SHIPPED_MODELS_DIR / version)
        graph = onnx.load_model(str(SHIPPED_MODELS_DIR / f"{version}-onnx" / ONNX_MODEL_FILE)).graph
        shipped = [numpy_helper.to_array(tensor) for tensor in graph.initializer]
        assert len(shipped) == len(weights)
        for ours, theirs in zip(shipped, weights, strict=True):
            np.testing.assert_array_equal(ours, theirs)


def int64_embedding_model() -> bytes:
    """What a PyTorch export of an embedding model looks like: int64 ids of shape [N], gathered directly."""
    users = numpy_helper.from_array(np.linspace(-1, 1, 50, dtype=np.float32).reshape(10, 5), "user_table")
    products = numpy_helper.from_array(
        np.linspace(1, -1, 35, dtype=np.float32).reshape(7, 5), "product_table"
    )
    nodes = [
        helper.make_node("Gather", ["user_table", "users"], ["u"]),
        helper.make_node("Gather", ["product_table", "products"], ["p"]),
        helper.make_node("Mul", ["u", "p"], ["both"]),
        helper.make_node("ReduceSum", ["both", "axis"], ["dot"], keepdims=0),
        helper.make_node("Sigmoid", ["dot"], ["predictions"]),
    ]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    graph = helper.make_graph(
        nodes,
        "int64",
        inputs=[
            helper.make_tensor_value_info(name, TensorProto.INT64, ["N"]) for name in ("users", "products")
        ],
        outputs=[helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["N"])],
        initializer=[users, products, axis],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_int64_id_inputs_of_shape_n_are_fed_as_the_model_declares(tmp_path):
    scorer = build_scorer(onnx_model("int64", inline(int64_embedding_model())))
    assert scorer.input_bounds == InputBounds(users=10, products=7)
    users, products = np.array([0, 3, 9], np.float32), np.array([6, 2, 0], np.float32)
    user_table = np.linspace(-1, 1, 50, dtype=np.float32).reshape(10, 5)
    product_table = np.linspace(1, -1, 35, dtype=np.float32).reshape(7, 5)
    expected = 1 / (1 + np.exp(-(user_table[[0, 3, 9]] * product_table[[6, 2, 0]]).sum(axis=1)))
    np.testing.assert_allclose(scorer.score(users, products), expected, rtol=1e-6)


def test_a_local_onnx_path_under_a_root_is_served_and_one_outside_is_refused(tmp_path):
    path = SHIPPED_MODELS_DIR / "2-onnx" / ONNX_MODEL_FILE
    scorer = build_scorer(ModelDescriptor("local", "", ONNX, None, str(path)))
    assert scorer.score(*probe_batch()).shape == (64,)
    (tmp_path / ONNX_MODEL_FILE).write_bytes(path.read_bytes())
    with pytest.raises(ModelLoadError, match="not under an allowed root"):
        build_scorer(ModelDescriptor("outside", "", ONNX, None, str(tmp_path)))


def test_external_data_inside_the_archive_is_loaded(tmp_path):
    """An export too big for one protobuf keeps its weights beside model.onnx: that is accepted, inside."""
    model = onnx.load_model(str(SHIPPED_MODELS_DIR / "1-onnx" / ONNX_MODEL_FILE))
    onnx.save_model(model, str(tmp_path / ONNX_MODEL_FILE), save_as_external_data=True,
                    location="weights.bin", size_threshold=0)  # fmt: skip
    files = {ONNX_MODEL_FILE: (tmp_path / ONNX_MODEL_FILE).read_bytes(),
             "weights.bin": (tmp_path / "weights.bin").read_bytes()}  # fmt: skip
    scorer = build_scorer(onnx_model("external", archive(files)))
    reference = build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1-onnx"))
    np.testing.assert_array_equal(scorer.score(*probe_batch()), reference.score(*probe_batch()))
    scorer.close()


def test_a_single_onnx_file_is_packed_as_model_onnx(tmp_path):
    source = tmp_path / "exported.onnx"
    source.write_bytes(int64_embedding_model())
    scorer = build_scorer(onnx_model("file", pack_file(source, ONNX_MODEL_FILE)))
    assert scorer.score(np.array([1.0], np.float32), np.array([1.0], np.float32)).shape == (1,)


@pytest.mark.parametrize("name", sorted(REFUSED_BY_THE_PROBE))
def test_onnx_models_with_wrong_answers_are_refused_by_the_probe(name):
    make, words = REFUSED_BY_THE_PROBE[name]
    with pytest.raises(ModelLoadError) as refused:
        build_scorer(onnx_model(name, make()))
    assert words in refused.value.reason


def test_every_hostile_onnx_model_is_refused_in_seconds_with_bounded_memory(tmp_path):
    """Judged in a driver process, so the children's peak memory is the unpacking children's alone."""
    driver = f"""
import json, resource, sys, time
sys.path.insert(0, {str(REPO / "tests")!r})
from support.hostile_onnx import REFUSED_BEFORE_LOADING
from flows.adapters.scorers import ModelLoadError, build_scorer
from flows.core.descriptors import ModelDescriptor, ModelType
verdicts = {{}}
for name, (make, _) in REFUSED_BEFORE_LOADING.items():
    payload = make()
    started = time.monotonic()
    try:
        build_scorer(ModelDescriptor(name, "", ModelType.ONNX, payload))
        reason = "ACCEPTED"
    except ModelLoadError as error:
        reason = error.reason
    verdicts[name] = [reason, time.monotonic() - started, len(payload)]
print(json.dumps({{"verdicts": verdicts,
    "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["verdicts"]) == set(REFUSED_BEFORE_LOADING)
    for name, (reason, seconds, size) in report["verdicts"].items():
        assert REFUSED_BEFORE_LOADING[name][1] in reason, (name, reason)
        assert seconds < 10, f"{name} took {seconds:.1f} s to refuse"
        assert size < 1_000_000, f"{name} is not a small message ({size} bytes)"
    assert report["children_mb"] < AdmissionPolicy().unpack_memory / 1024**2, report


def test_models_that_would_hurt_the_flow_once_run_are_refused_by_their_trial_in_the_child():
    """Memory that grows when the session opens or with the batch, minutes per batch, NaN past the probe's
    ids, 64 scores for any batch: each refused by name, and the judging process (the flow's, here a
    driver's) never runs them: its own peak memory stays where it was."""
    driver = f"""
import json, resource, sys, time
sys.path.insert(0, {str(REPO / "tests")!r})
from support.hostile_onnx import REFUSED_BY_THE_TRIAL
from flows.adapters.scorers import ModelLoadError, build_scorer
from flows.core.descriptors import ModelDescriptor, ModelType
payloads = {{name: make() for name, (make, _) in REFUSED_BY_THE_TRIAL.items()}}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
verdicts = {{}}
for name, payload in payloads.items():
    try:
        build_scorer(ModelDescriptor(name, "", ModelType.ONNX, payload))
        reason = "ACCEPTED"
    except ModelLoadError as error:
        reason = error.reason
    verdicts[name] = [reason, len(payload)]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"verdicts": verdicts, "grew_mb": after - before}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=600, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    for name, (reason, size) in report["verdicts"].items():
        assert REFUSED_BY_THE_TRIAL[name][1] in reason, (name, reason)
        assert size < 1_000_000, f"{name} is not a small message ({size} bytes)"
    assert report["grew_mb"] < 100, report


def test_an_accepted_onnx_model_carries_what_its_trial_measured():
    scorer = build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1-onnx"))
    trial = scorer.trial
    assert trial.max_pairs == AdmissionPolicy().max_batch_pairs
    assert 0 < trial.call_ms < AdmissionPolicy().max_call_seconds * 1000
    assert trial.peak_mb > trial.base_mb > 0
    assert "pairs in" in trial.summary()
    scorer.close()


def test_a_model_too_slow_for_the_largest_batch_is_refused_naming_the_limit():
    policy = AdmissionPolicy(max_call_seconds=0.0005)
    with pytest.raises(ModelLoadError) as refused:
        build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1-onnx"), policy)
    assert "over 0.0005 s (SERVING_MODEL_MAX_CALL_SECONDS)" in refused.value.reason


def test_an_onnx_champion_keeps_scoring_while_hostile_onnx_models_are_judged():
    champion = shipped_model(SHIPPED_MODELS_DIR, "1-onnx")
    hostile = [
        onnx_model(name, make())
        for name, (make, _) in {**REFUSED_BEFORE_LOADING, **REFUSED_BY_THE_PROBE}.items()
    ]
    records = sample_records(500)
    run = judged_beside_a_champion(champion, hostile, records)
    assert len(run.results) == len(records)
    assert {item.result.metadata.model_name for item in run.results} == {champion.model_name}
    assert {item.result.metadata.source for item in run.results} == {"embedded:onnx"}
    assert not [item for item in run.results if item.result.metadata.errors]
    assert set(run.rejected()) == {descriptor.model_name for descriptor in hostile}
    assert all("still serving 'recommender-v1-onnx'" in reason for reason in run.rejected().values())


def test_an_onnx_descriptor_path_to_a_missing_directory_is_refused():
    missing = Path(SHIPPED_MODELS_DIR) / "no-such-onnx"
    with pytest.raises(ModelLoadError, match="no ONNX model directory"):
        build_scorer(ModelDescriptor("missing", "", ONNX, None, str(missing)))


def test_model_bytes_helper_builds_what_admission_accepts():
    """The hostile models differ from an accepted one only by what they break."""
    from support.hostile_onnx import mean_of_inputs

    scorer = build_scorer(onnx_model("fine", inline(model_bytes(mean_of_inputs()))))
    assert scorer.score(np.zeros(3, np.float32), np.zeros(3, np.float32)).tolist() == [0.5, 0.5, 0.5]
