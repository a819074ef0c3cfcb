"""The embedded PMML scorer: a PMML regression tree answers as its leaves say (inline, in an archive, at a
local path), the shipped `1-pmml` is what `serving-train-model --format pmml` writes and scores as its
trees, hostile PMML documents are refused through the whole admission naming their cause (no file read, no
URL fetched), a flow without the evaluator refuses PMML with the command that installs it, and the champion
keeps scoring while hostile PMML models are judged."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from support import hostile_pmml as hostile
from support.core_runs import (
    Turn,
    every_shard,
    judged_beside_a_champion,
    messages,
    run_in_turns,
    sample_records,
)
from support.side_effects import counting_server, unread_marker, was_read

from flows.adapters.scorers import ModelLoadError, build_scorer
from flows.adapters.scorers.archive import pack_file
from flows.adapters.sources.generators import shipped_model
from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.model_formats import PMML_MODEL_FILE
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.tools import train_model

PMML = ModelType.PMML


def pmml_model(name: str, payload: bytes | None = None, location: str | None = None) -> ModelDescriptor:
    return ModelDescriptor(name, "", PMML, payload, location)


def refusal(descriptor: ModelDescriptor, policy: AdmissionPolicy | None = None) -> str:
    with pytest.raises(ModelLoadError) as refused:
        build_scorer(descriptor, policy or AdmissionPolicy())
    return str(refused.value)


def test_a_pmml_tree_answers_as_its_leaves_say():
    scorer = build_scorer(pmml_model("quadrants", hostile.quadrant_tree()))
    rng = np.random.default_rng(7)
    users = rng.integers(0, 1000, 5_000).astype(np.float32)
    products = rng.integers(0, 10_000, 5_000).astype(np.float32)
    try:
        assert scorer.source == "embedded:pmml"
        assert np.array_equal(scorer.score(users, products), hostile.quadrant_scores(users, products))
        assert scorer.trial is not None and scorer.trial.max_pairs == AdmissionPolicy().max_batch_pairs
    finally:
        scorer.close()


def test_a_pmml_document_in_an_archive_or_at_a_local_path_is_served(tmp_path):
    document = tmp_path / "quadrants.pmml"
    document.write_bytes(hostile.quadrant_tree())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.pmml").write_bytes(hostile.quadrant_tree())
    inside = AdmissionPolicy(roots=(tmp_path,))
    users, products = np.array([10, 900], np.float32), np.array([10, 9000], np.float32)
    for descriptor in (
        pmml_model("archived", pack_file(document, "model.pmml")),
        pmml_model("a-file", location=str(document)),
        pmml_model("a-directory", location=str(tmp_path / "model")),
    ):
        scorer = build_scorer(descriptor, inside)
        assert scorer.score(users, products).tolist() == pytest.approx([0.2, 0.8]), descriptor.model_name
        scorer.close()
    outside = AdmissionPolicy(roots=(tmp_path / "model",))
    assert "not under" in refusal(pmml_model("outside", location=str(document)), outside)


HOSTILE = {
    "billion laughs": (hostile.billion_laughs, "DOCTYPE declaration"),
    "quadratic blow-up": (hostile.quadratic_blowup, "DOCTYPE declaration"),
    "an internal entity that changes a coefficient": (hostile.internal_entity_coefficient, "DOCTYPE"),
    "20,000-deep nesting": (hostile.deep_nesting, "nesting deeper than 100"),
    "a model type outside the list": (hostile.scorecard, "model element Scorecard not allowed"),
    "fields other than the contract's": (hostile.foreign_fields, "active MiningSchema fields"),
    "a categorical target": (hostile.categorical_target, "target 'rating' is not a continuous"),
    "a model that answers NaN": (lambda: hostile.quadrant_tree(nan_leaf=True), "scores not finite"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_every_hostile_pmml_is_refused_through_the_admission_naming_its_cause(case):
    make, cause = HOSTILE[case]
    assert cause in refusal(pmml_model(case, make()))


def test_external_entities_read_no_file_and_fetch_no_url_anywhere_in_the_admission(tmp_path):
    secret = unread_marker(tmp_path)
    with counting_server() as server:
        documents: dict[str, Callable[[], bytes]] = {
            "file": lambda: hostile.external_file_entity(str(secret)),
            "url": lambda: hostile.external_url_entity(server.url("secret.txt")),
            "dtd": lambda: hostile.external_dtd(server.url("evil.dtd")),
        }
        for name, make in documents.items():
            assert "DOCTYPE declaration" in refusal(pmml_model(name, make()))
        assert server.requests == [], "a URL was fetched"
    assert not was_read(secret), "the secret file was read"


def test_100_mb_of_valid_looking_elements_is_refused_by_its_size_before_it_is_parsed(tmp_path):
    flood = tmp_path / "flood.pmml"
    assert hostile.write_many_nodes(str(flood), nodes=1_000_000) > 100 * 10**6
    reason = refusal(pmml_model("flood", location=str(flood)), AdmissionPolicy(roots=(tmp_path,)))
    assert "bytes (max 33554432)" in reason


def test_without_the_evaluator_a_pmml_model_is_refused_with_the_command_that_installs_it(
    tmp_path, monkeypatch
):
    missing = tmp_path / "sklearn_pmml_model"
    missing.mkdir()
    (missing / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the admission child finds this one first
    reason = refusal(pmml_model("no-evaluator", hostile.quadrant_tree()))
    assert "pip install 'bytewax-model-serving[pmml]'" in reason


def test_the_shipped_pmml_model_is_what_serving_train_model_writes(tmp_path):
    """Byte for byte: the export is reproducible, and the shipped `1-pmml` is its output, not a hand edit."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.tools.train_model", "--version", "1", "--format", "pmml"]
        + ["--out", str(tmp_path / "1-pmml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "1-pmml" / PMML_MODEL_FILE).read_bytes()
    assert written == (SHIPPED_MODELS_DIR / "1-pmml" / PMML_MODEL_FILE).read_bytes()
    assert b"Software AG" not in written and b"Timestamp" not in written  # the writer's stamps, replaced
    agreement = r"top-5 agreement with 1-onnx over 3,000 generated records: 0\.\d+ \(random scores"
    assert re.search(agreement, done.stdout), done.stdout


def test_the_shipped_pmml_model_scores_as_the_trees_it_was_written_from():
    scorer = build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1-pmml"))
    rng = np.random.default_rng(11)
    users = rng.integers(0, 1000, 2_000).astype(np.float32)
    products = rng.integers(0, 300, 2_000).astype(np.float32)
    try:
        assert scorer.source == "embedded:pmml"
        trees = train_model.train_trees(1)  # the same fit: the seed is the version
        expected = trees.predict(np.column_stack([users, products]))
        np.testing.assert_allclose(scorer.score(users, products), expected, atol=1e-6)
    finally:
        scorer.close()


def test_a_pmml_model_too_slow_for_the_largest_batch_is_refused_naming_the_limit():
    """100 trees take tens of milliseconds on the largest batch (50,000 pairs), on any machine."""
    policy = AdmissionPolicy(max_call_seconds=0.005)
    reason = refusal(shipped_model(SHIPPED_MODELS_DIR, "1-pmml"), policy)
    assert "over 0.005 s (SERVING_MODEL_MAX_CALL_SECONDS)" in reason


def test_a_pmml_champion_answers_through_the_flow():
    champion = shipped_model(SHIPPED_MODELS_DIR, "1-onnx")
    quadrants = pmml_model("quadrants", hostile.quadrant_tree())
    records = sample_records(400)
    batches = [messages(records[start : start + 25]) for start in range(0, len(records), 25)]
    run = run_in_turns(
        [
            Turn([champion], batches[:4], every_shard("swapped", champion.model_name, 4)),
            Turn([quadrants], batches[4:], every_shard("swapped", "quadrants", 4)),
        ]
    )
    assert run.errors() == []
    answered = [item.result for item in run.results if item.result.metadata.model_name == "quadrants"]
    assert len(answered) == len(records) - 100
    assert {result.metadata.source for result in answered} == {"embedded:pmml"}
    for result in answered:
        products = np.array(result.input_record.products, np.float32)
        users = np.full(products.size, result.input_record.user, np.float32)
        assert result.model_result.probabilities == pytest.approx(
            hostile.quadrant_scores(users, products).tolist()
        )


def test_the_champion_keeps_scoring_while_hostile_pmml_models_are_judged():
    champion = shipped_model(SHIPPED_MODELS_DIR, "1-onnx")
    records = sample_records(500)
    judged = [pmml_model(name, make()) for name, (make, _) in HOSTILE.items()]
    run = judged_beside_a_champion(champion, judged, records)
    assert len(run.results) == len(records)
    assert {item.result.metadata.model_name for item in run.results} == {champion.model_name}
    assert not [item for item in run.results if item.result.metadata.errors]
    assert set(run.rejected()) == set(HOSTILE)
    assert all("still serving 'recommender-v1-onnx'" in reason for reason in run.rejected().values())
