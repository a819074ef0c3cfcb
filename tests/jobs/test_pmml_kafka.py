"""A PMML challenger of an ONNX champion through a broker, with `serving-publish-model`: the shipped `1-pmml`
in shadow (its results on the shadow topic, as the PMML model scores them alone), retired; then the same
document sent as a file, as a canary on half the users, promoted to champion."""

from __future__ import annotations

import numpy as np
from support.jobs import finished_output, wait_for
from support.topics import publish, results_by_offset, start_tailing_flow

from flows.adapters.sources.generators import shipped_model
from flows.core.challenger import user_buckets
from flows.core.model_formats import PMML_MODEL_FILE
from flows.core.scorer import build_scorer
from flows.core.shipped import SHIPPED_MODELS_DIR

ONNX_V1, PMML_V1 = "recommender-v1-onnx", "recommender-v1-pmml"


def test_a_pmml_challenger_shadows_then_canaries_an_onnx_champion_through_the_models_topic(kafka_bootstrap):
    flow = start_tailing_flow(kafka_bootstrap, "pmml-challenger", shipped_model(SHIPPED_MODELS_DIR, "1-onnx"))
    topics, events, answer = flow.topics, flow.events, flow.answer
    pmml_alone = build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1-pmml"))
    try:
        wait_for(lambda: ("accepted", ONNX_V1) in events(), "the ONNX champion accepted", timeout=120)
        assert f"published model {PMML_V1!r} as shadow challenger" in publish(
            kafka_bootstrap, topics["models"], "--version", "1-pmml", "--challenger", "shadow"
        )
        wait_for(lambda: ("accepted", PMML_V1) in events(), "the PMML shadow accepted", timeout=120)
        records, answers = answer(51, 500)
        assert {(result.metadata.model_name, result.metadata.source) for result in answers.values()} == {
            (ONNX_V1, "embedded:onnx")
        }
        shadow = results_by_offset(kafka_bootstrap, topics["shadow"], 500)
        assert sorted(shadow) == list(range(500))
        for offset, [result] in shadow.items():  # the shadow scores as the PMML model does alone
            assert (result.metadata.model_name, result.metadata.source) == (PMML_V1, "embedded:pmml")
            record = records[offset]
            products = np.asarray(record.products, np.float32)
            alone = pmml_alone.score(np.full(products.size, record.user, np.float32), products)
            np.testing.assert_allclose(result.model_result.probabilities, alone, atol=1e-6)
        publish(kafka_bootstrap, topics["models"], "--retire", PMML_V1)
        wait_for(lambda: ("retired", PMML_V1) in events(), "the PMML shadow retired", timeout=60)

        document = SHIPPED_MODELS_DIR / "1-pmml" / PMML_MODEL_FILE
        assert f"published model {PMML_V1!r} as canary challenger" in publish(
            kafka_bootstrap,
            topics["models"],
            "--file",
            str(document),
            "--name",
            PMML_V1,
            "--challenger",
            "canary",
            "--fraction",
            "0.5",
        )
        wait_for(lambda: events().count(("accepted", PMML_V1)) == 2, "the PMML canary accepted", timeout=120)
        records, answers = answer(52, 600)
        in_canary = user_buckets(np.array([record.user for record in records]), PMML_V1) < 0.5
        assert 0 < in_canary.sum() < in_canary.size
        for index, result in answers.items():
            assert result.metadata.errors == ""
            assert result.metadata.model_name == (PMML_V1 if in_canary[index] else ONNX_V1)

        publish(kafka_bootstrap, topics["models"], "--promote", PMML_V1)
        wait_for(lambda: ("promoted", PMML_V1) in events(), "the PMML promotion", timeout=60)
        _, answers = answer(53, 300)
        assert {(result.metadata.source, result.metadata.errors) for result in answers.values()} == {
            ("embedded:pmml", "")
        }
    finally:
        pmml_alone.close()
        flow.process.terminate()
        finished_output(flow.process)
