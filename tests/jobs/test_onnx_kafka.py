"""Across formats through a broker, with `serving-publish-model`: an ONNX shadow beside a TensorFlow champion,
promoted; then a TensorFlow canary beside the ONNX champion, retired; then a single ONNX file as champion."""

from __future__ import annotations

import numpy as np
from support.jobs import finished_output, wait_for
from support.topics import publish, results_by_offset, start_tailing_flow

from flows.adapters.sources.generators import shipped_model
from flows.core.challenger import user_buckets
from flows.core.model_formats import ONNX_MODEL_FILE
from flows.core.scorer import build_scorer
from flows.core.shipped import SHIPPED_MODELS_DIR

TF_V1, ONNX_V2 = "recommender-v1", "recommender-v2-onnx"


def test_onnx_and_tensorflow_challenge_each_other_through_the_models_topic(kafka_bootstrap):
    flow = start_tailing_flow(kafka_bootstrap, "cross-format", shipped_model(SHIPPED_MODELS_DIR, "1"))
    topics, events, answer = flow.topics, flow.events, flow.answer
    try:
        wait_for(lambda: ("accepted", TF_V1) in events(), "v1 accepted", timeout=120)
        assert f"published model {ONNX_V2!r} as shadow challenger" in publish(
            kafka_bootstrap, topics["models"], "--version", "2-onnx", "--challenger", "shadow"
        )
        wait_for(lambda: ("accepted", ONNX_V2) in events(), "the ONNX shadow accepted", timeout=120)
        records, answers = answer(41, 500)
        assert {(result.metadata.model_name, result.metadata.source) for result in answers.values()} == {
            (TF_V1, "embedded:savedmodel")
        }
        shadow = results_by_offset(kafka_bootstrap, topics["shadow"], 500)
        assert {result.metadata.source for results in shadow.values() for result in results} == {
            "embedded:onnx"
        }
        tf_v2 = build_scorer(shipped_model(SHIPPED_MODELS_DIR, "2"))
        for offset, [result] in shadow.items():  # the ONNX twin scores as TensorFlow's v2 would have
            record = records[offset]
            alone = tf_v2.score(np.full(len(record.products), record.user, np.float32),
                                np.asarray(record.products, np.float32))  # fmt: skip
            np.testing.assert_allclose(result.model_result.probabilities, alone, atol=1e-5)
        tf_v2.close()

        publish(kafka_bootstrap, topics["models"], "--promote", ONNX_V2)
        wait_for(lambda: ("promoted", ONNX_V2) in events(), "the ONNX promotion", timeout=60)
        _, answers = answer(42, 300)
        assert {result.metadata.source for result in answers.values()} == {"embedded:onnx"}

        publish(
            kafka_bootstrap, topics["models"], "--version", "1", "--challenger", "canary", "--fraction", "0.5"
        )
        wait_for(
            lambda: events().count(("accepted", TF_V1)) == 2, "the TensorFlow canary accepted", timeout=120
        )
        records, answers = answer(43, 600)
        in_canary = user_buckets(np.array([record.user for record in records]), TF_V1) < 0.5
        for index, result in answers.items():
            assert result.metadata.model_name == (TF_V1 if in_canary[index] else ONNX_V2)
            assert result.metadata.errors == ""
        publish(kafka_bootstrap, topics["models"], "--retire", TF_V1)
        wait_for(lambda: ("retired", TF_V1) in events(), "the canary retired", timeout=60)

        onnx_file = SHIPPED_MODELS_DIR / "1-onnx" / ONNX_MODEL_FILE
        assert "published model 'exported'" in publish(
            kafka_bootstrap,
            topics["models"],
            "--type",
            "ONNX",
            "--file",
            str(onnx_file),
            "--name",
            "exported",
        )
        wait_for(lambda: ("accepted", "exported") in events(), "the ONNX file accepted", timeout=120)
        _, answers = answer(44, 200)
        assert {(result.metadata.model_name, result.metadata.errors) for result in answers.values()} == {
            ("exported", "")
        }
    finally:
        flow.process.terminate()
        finished_output(flow.process)
