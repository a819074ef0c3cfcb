"""Runtimes loaded only when a model needs them: the main job serving ONNX over Kafka never imports
TensorFlow, gRPC or the PMML evaluator, and a TensorFlow model published later is loaded off the scoring
path. The flow runs as `tests/support/watched_imports.py`, which announces those imports and holds
TensorFlow's until the test lets it go."""

from __future__ import annotations

from pathlib import Path

from support.jobs import announced_imports, finished_output, wait_for
from support.topics import publish, start_tailing_flow

from flows.adapters.sources.generators import shipped_model
from flows.core.shipped import SHIPPED_MODELS_DIR

ONNX_V1, TF_V1 = "recommender-v1-onnx", "recommender-v1"


def test_an_onnx_flow_imports_no_other_runtime_and_a_later_tensorflow_model_loads_while_onnx_answers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    imports, gate = tmp_path / "imports.log", tmp_path / "tensorflow-may-import"
    flow = start_tailing_flow(
        kafka_bootstrap,
        "runtimes",
        shipped_model(SHIPPED_MODELS_DIR, "1-onnx"),
        module="support.watched_imports",
        SERVING_TEST_IMPORT_LOG=str(imports),
        SERVING_TEST_TENSORFLOW_GATE=str(gate),
        SERVING_MODEL_LOAD_TIMEOUT="600",  # the held import counts towards the TensorFlow model's load
    )
    topics, events, answer = flow.topics, flow.events, flow.answer
    try:
        wait_for(lambda: ("accepted", ONNX_V1) in events(), "the ONNX champion accepted", timeout=120)
        _, answers = answer(51, 300)
        assert {(result.metadata.model_name, result.metadata.source) for result in answers.values()} == {
            (ONNX_V1, "embedded:onnx")
        }
        assert announced_imports(imports) == []  # no TensorFlow, gRPC, tritonclient or PMML evaluator

        publish(kafka_bootstrap, topics["models"], "--version", "1")
        wait_for(
            lambda: announced_imports(imports) != [],
            "the TensorFlow model's import of TensorFlow",
            timeout=120,
        )
        [(thread, package)] = announced_imports(imports)
        assert package == "tensorflow"
        assert thread.startswith("model-load-"), thread  # the model's load thread, not a worker
        _, answers = answer(52, 300)  # while TensorFlow's import is held: the ONNX champion answers
        assert {(result.metadata.model_name, result.metadata.errors) for result in answers.values()} == {
            (ONNX_V1, "")
        }

        gate.touch()
        wait_for(lambda: ("accepted", TF_V1) in events(), "the TensorFlow champion accepted", timeout=180)
        _, answers = answer(53, 200)
        assert {(result.metadata.model_name, result.metadata.source) for result in answers.values()} == {
            (TF_V1, "embedded:savedmodel")
        }
        assert "grpc" not in {package for _, package in announced_imports(imports)}
    finally:
        flow.process.terminate()
        output = finished_output(flow.process)
    assert "TensorFlow imported in" in output
    assert "Could not find cuda drivers" not in output  # TensorFlow's own start-up lines stay muted
