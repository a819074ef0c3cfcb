"""A fresh flow (no recovery state) reading a models topic with history serves the newest model first."""

from __future__ import annotations

import pytest
from support.core_runs import sample_records
from support.jobs import run_flow_to_end_of_topics

from flows.testing.local_broker import consume_all, create_topics, produce
from flows.wire.avro import MODEL, RECORD, RESULT


@pytest.mark.parametrize(("partitions", "workers"), [(1, 1), (4, 1), (1, 2), (4, 2)])
def test_the_backlog_is_scored_by_the_newest_model_on_the_topic(
    kafka_bootstrap, model_v1, model_v2, partitions, workers
):
    topics = create_topics(
        kafka_bootstrap, "startup", ["data", "models", "results", "dead"], partitions=partitions
    )
    records = sample_records(4000)
    produce(
        kafka_bootstrap, topics["models"], [(b"m", MODEL.encode(model_v1)), (b"m", MODEL.encode(model_v2))]
    )
    produce(kafka_bootstrap, topics["data"], [(str(r.user).encode(), RECORD.encode(r)) for r in records])

    output = run_flow_to_end_of_topics(kafka_bootstrap, topics, "-w", str(workers))

    results = [
        RESULT.decode(message.value())
        for message in consume_all(kafka_bootstrap, topics["results"], len(records))
    ]
    assert len(results) == len(records)
    served = {result.metadata.model_name for result in results}
    assert served == {model_v2.model_name}, output
    assert all(not result.metadata.errors for result in results)
    assert "model 'recommender-v1' accepted" not in output  # superseded on the topic: never judged
