"""The serving application: the dataflow wired to its inputs and outputs as the settings say.

With nothing configured it runs on the embedded default: generated records and model updates alternating
between the shipped versions, scored in process, results and model events on the console. With
`SERVING_KAFKA_BOOTSTRAP_SERVERS` set it reads and writes Kafka topics instead (see `flows.adapters.kafka`).
Settings are `SERVING_*` environment variables (see `flows.runtime.settings` and docs/configuration.md).
"""

from __future__ import annotations

import gc

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

import flows.adapters.scorers  # noqa: F401  (registers every kind of model with the core's factory)
from flows.adapters.kafka.outputs import kafka_outputs
from flows.adapters.kafka.source import kafka_inputs
from flows.adapters.sinks.console import ConsoleEventSink, ConsoleExplanationSink, ConsoleResultSink
from flows.adapters.sinks.json_lines import JsonLinesResultSink
from flows.adapters.sources.batched import PollBatches
from flows.adapters.sources.generators import (
    DataGenerator,
    ModelGenerator,
    models_in_bounded_run,
    scheduled_model,
)
from flows.adapters.sources.model_gate import WaitForChampion
from flows.adapters.sources.stoppable import StoppableSource
from flows.core.champion_gate import ChampionGate
from flows.core.context import ServingContext
from flows.core.dataflow import serve
from flows.core.descriptors import ModelDescriptor
from flows.core.records import DataMessage
from flows.runtime.settings import Settings


def freeze_what_start_built() -> None:
    """Freeze for the garbage collector what the start built and the process keeps (modules, settings, the
    flow), as the main job does before it runs: the full collections that in-flight records trigger then
    skip it instead of rescanning it each time. Left unfrozen, SciPy's objects cost the ONNX flow a fifth
    of its throughput, and the start's objects raised its p99 per record from about 20 ms to 75."""
    gc.collect()  # garbage left now would stay for good once frozen
    gc.freeze()


def build_flow(settings: Settings, context: ServingContext) -> Dataflow:
    """The serving dataflow, wired to Kafka if it is configured, else to the embedded default; its steps
    share `context` (scorer cache, telemetry, statistics)."""
    flow = Dataflow("serving")
    kafka = settings.kafka
    if kafka.brokers:
        inputs = kafka_inputs(
            flow,
            kafka,
            context.champion_gate,
            settings.flow.data_wait_for_model,
            context.state.partition_lag,
        )
        data, models = inputs.data, inputs.models
    else:
        data, models = embedded_inputs(flow, settings, context.champion_gate)

    streams = serve(
        "serve",
        data,
        models,
        context,
        shards=settings.flow.shards,
        hold_limit=settings.flow.hold_limit,
        max_products=settings.flow.max_products,
        drift=settings.drift,
        outliers=settings.outliers,
        challengers=settings.challenger,
        shadow_results=bool(kafka.brokers and kafka.shadow_results_topic),
        rollback=settings.rollback,
        explain=settings.explain,
        # Both model sources mark when they have sent what was there at start: the holder starts with the
        # newest model (a Kafka topic holds the history), and re-sends after a restart on that input.
        wait_for_catch_up=True,
    )

    if kafka.brokers:
        kafka_outputs(
            kafka,
            streams.results,
            inputs.dead_letters,
            streams.events,
            streams.reports,
            streams.shadow_results,
            settings.events,
            streams.explanations,
        )
    output = settings.output
    op.output("console_results", streams.results, ConsoleResultSink(output.console_every))
    op.output("console_events", streams.events, ConsoleEventSink())
    op.output("console_reports", streams.reports, ConsoleEventSink())
    if output.console_every:
        op.output("console_explanations", streams.explanations, ConsoleExplanationSink())
    if output.output_dir is not None:
        op.output("file_results", streams.results, JsonLinesResultSink(output.output_dir))
    return flow


def embedded_inputs(
    flow: Dataflow, settings: Settings, gate: ChampionGate
) -> tuple[Stream[list[DataMessage]], Stream[ModelDescriptor]]:
    """Generated records (in batches, one per generator poll, none before `gate` opens) and model updates
    following the schedule of shipped versions (`SERVING_MODEL_VERSIONS`: champions, challengers and
    commands, in turn)."""
    plan = settings.generator
    generator = DataGenerator(
        plan.records,
        plan.record_rate,
        plan.generator_partitions,
        plan.generator_batch,
        plan.seed,
        plan.data_shift_after,
        plan.generator_explain_every,
    )
    gated = WaitForChampion(PollBatches(generator), gate, settings.flow.data_wait_for_model)
    data = op.input("data", flow, StoppableSource(gated))
    versions = [scheduled_model(plan.models_dir, entry) for entry in plan.model_versions]
    model_count = models_in_bounded_run(plan.records, plan.record_rate, plan.model_interval)
    run_seconds = plan.records / plan.record_rate if plan.records and plan.record_rate else 0.0
    models_source = ModelGenerator(versions, plan.model_interval, model_count, open_for=run_seconds)
    models = op.input("models", flow, StoppableSource(models_source))
    return data, models
