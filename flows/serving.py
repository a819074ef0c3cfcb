"""The main job: `python -m bytewax.run flows.serving`.

With nothing configured it runs on the embedded default: generated records and model updates alternating
between the shipped versions, scored in process, results and model events on the console. Settings are
`SERVING_*` environment variables (see `flows.settings` and the README).
"""

from __future__ import annotations

import logging

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows import shutdown
from flows.dataflow import serve
from flows.generators import DataGenerator, ModelGenerator, models_in_bounded_run, shipped_model
from flows.settings import Settings
from flows.sinks import ConsoleEventSink, ConsoleResultSink, JsonLinesResultSink


def build_flow(settings: Settings) -> Dataflow:
    """The serving dataflow wired to the embedded generators and the console (and files, if asked)."""
    flow = Dataflow("serving")
    data = op.input(
        "data",
        flow,
        DataGenerator(
            settings.records,
            settings.record_rate,
            settings.generator_partitions,
            settings.generator_batch,
            settings.seed,
        ),
    )
    models = [shipped_model(settings.models_dir, version) for version in settings.versions]
    model_count = models_in_bounded_run(settings.records, settings.record_rate, settings.model_interval)
    updates = op.input("models", flow, ModelGenerator(models, settings.model_interval, model_count))

    streams = serve("serve", data, updates, shards=settings.shards, hold_limit=settings.hold_limit)

    op.output("console_results", streams.results, ConsoleResultSink(settings.console_every))
    op.output("console_events", streams.events, ConsoleEventSink())
    if settings.output_dir is not None:
        op.output("file_results", streams.results, JsonLinesResultSink(settings.output_dir))
    return flow


logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
shutdown.install()
flow = build_flow(Settings())
