"""The serving application: the dataflow wired to its inputs and outputs as the settings say.

With nothing configured it runs on the embedded default: generated records and model updates alternating
between the shipped versions, scored in process, results and model events on the console. With
`SERVING_KAFKA_BOOTSTRAP_SERVERS` set it reads and writes Kafka topics instead (see `flows.kafka`).
Settings are `SERVING_*` environment variables (see `flows.settings` and the README).
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from flows.challenger import ChallengerSettings
from flows.context import ServingContext
from flows.dataflow import serve
from flows.drift import DriftSettings
from flows.kafka.outputs import kafka_outputs
from flows.kafka.source import kafka_inputs
from flows.records import DataMessage, ModelDescriptor
from flows.settings import Settings
from flows.sinks.console import ConsoleEventSink, ConsoleResultSink
from flows.sinks.json_lines import JsonLinesResultSink
from flows.sources.batched import PollBatches
from flows.sources.generators import DataGenerator, ModelGenerator, models_in_bounded_run, scheduled_model
from flows.sources.model_gate import ChampionGate, WaitForChampion
from flows.sources.stoppable import StoppableSource


def build_flow(settings: Settings, context: ServingContext) -> Dataflow:
    """The serving dataflow, wired to Kafka if it is configured, else to the embedded default; its steps
    share `context` (scorer cache, telemetry, statistics)."""
    flow = Dataflow("serving")
    if settings.kafka_bootstrap_servers:
        inputs = kafka_inputs(flow, settings, context.champion_gate)
        data, models = inputs.data, inputs.models
    else:
        data, models = embedded_inputs(flow, settings, context.champion_gate)

    streams = serve(
        "serve",
        data,
        models,
        context,
        shards=settings.shards,
        hold_limit=settings.hold_limit,
        max_products=settings.max_products,
        drift=DriftSettings.of(settings),
        challengers=ChallengerSettings.of(settings),
        # Both model sources mark when they have sent what was there at start: the holder starts with the
        # newest model (a Kafka topic holds the history), and re-sends after a restart on that input.
        wait_for_catch_up=True,
    )

    if settings.kafka_bootstrap_servers:
        kafka_outputs(
            settings,
            streams.results,
            inputs.dead_letters,
            streams.events,
            streams.reports,
            streams.shadow_results,
        )
    op.output("console_results", streams.results, ConsoleResultSink(settings.console_every))
    op.output("console_events", streams.events, ConsoleEventSink())
    op.output("console_reports", streams.reports, ConsoleEventSink())
    if settings.output_dir is not None:
        op.output("file_results", streams.results, JsonLinesResultSink(settings.output_dir))
    return flow


def embedded_inputs(
    flow: Dataflow, settings: Settings, gate: ChampionGate
) -> tuple[Stream[list[DataMessage]], Stream[ModelDescriptor]]:
    """Generated records (in batches, one per generator poll, none before `gate` opens) and model updates
    following the schedule of shipped versions (`SERVING_MODEL_VERSIONS`: champions, challengers and
    commands, in turn)."""
    generator = DataGenerator(
        settings.records,
        settings.record_rate,
        settings.generator_partitions,
        settings.generator_batch,
        settings.seed,
        settings.data_shift_after,
    )
    gated = WaitForChampion(PollBatches(generator), gate, settings.data_wait_for_model)
    data = op.input("data", flow, StoppableSource(gated))
    versions = [scheduled_model(settings.models_dir, entry) for entry in settings.versions]
    model_count = models_in_bounded_run(settings.records, settings.record_rate, settings.model_interval)
    run_seconds = (
        settings.records / settings.record_rate if settings.records and settings.record_rate else 0.0
    )
    generator = ModelGenerator(versions, settings.model_interval, model_count, open_for=run_seconds)
    models = op.input("models", flow, StoppableSource(generator))
    return data, models
