"""The model-flood scenario: v1 serves records at an offered rate while a flood of model messages arrives at
once (issue 19: 40 descriptors naming one directory in different spellings once took memory from 0.7 to
2.0 GB, 27 unpacking children and record latency up to 51 s).

The flood is `flood` local-path descriptors of the shipped v2: half name one copy of it in as many
spellings (`/d/v2`, `/d//v2/`, `file:///d/x/../v2`, ...), half name distinct copies (distinct models, so
the load limit and the dropping of superseded models are what bounds them). Measured while it runs: the
process's peak resident memory and threads, its most unpacking children at once, the loads the cache
started, the time from the flood's arrival to its last verdict, and record latency.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from flows.adapters.sources.batched import PollBatches
from flows.adapters.sources.generators import DataGenerator, shipped_model
from flows.bench.report import report
from flows.bench.sinks import ArrivalSink, SwapSink
from flows.core.context import ServingContext
from flows.core.dataflow import serve
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.events import ModelEvent
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.core.vocabulary import EventKind
from flows.runtime.settings import Settings


def flood_of(directory: Path, count: int) -> list[ModelDescriptor]:
    """`count` descriptors of the SavedModel copied under `directory`: half one copy in many spellings,
    half distinct copies."""
    same = directory / "same" / "v2"
    shutil.copytree(SHIPPED_MODELS_DIR / "2", same)
    spellings = [str(same), f"{same}/", f"{directory}//same/v2", f"{directory}/same/./v2",
                 f"{directory}/same/x/../v2", f"file://{same}", f"file://{directory}/same//v2//"]  # fmt: skip
    flood = []
    for index in range(count):
        if index % 2 == 0:
            location = spellings[(index // 2) % len(spellings)]
            if index // 2 >= len(spellings):
                location = location.replace("/same/", "/" + "./" * (index // 2) + "same/", 1)
        else:
            location = str(directory / f"copy-{index}")
            shutil.copytree(SHIPPED_MODELS_DIR / "2", location)
        flood.append(ModelDescriptor(f"flood-{index}", "", ModelType.TENSORFLOWSAVED, None, location))
    return flood


class _ProcessSampler:
    """Samples this process's resident memory, threads and child processes every 50 ms, keeping the peaks."""

    def __init__(self) -> None:
        self.peak_rss_mb = 0.0
        self.peak_threads = 0
        self.peak_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.wait(0.05):
            with open(f"/proc/{pid}/status", encoding="ascii") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            self.peak_rss_mb = max(self.peak_rss_mb, int(fields["VmRSS"].split()[0]) / 1024)
            self.peak_threads = max(self.peak_threads, int(fields["Threads"]))
            children = 0
            for task in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listed:
                        children += len(listed.read().split())
                except FileNotFoundError:
                    continue  # the thread ended between the listing and the read
            self.peak_children = max(self.peak_children, children)


def run_model_flood(
    records: int, rate: float, flood: int, flood_after: float, shards: int, batch: int
) -> dict:
    """v1 serving at `rate`; `flood` model messages arrive together after `flood_after` seconds."""
    if rate <= 0:
        raise SystemExit("bench: the model-flood scenario needs an offered --rate")
    settings = Settings.from_environment()
    with tempfile.TemporaryDirectory(prefix="flood-") as scratch:
        root = Path(scratch)
        policy = settings.admission.model_copy(update={"roots": (SHIPPED_MODELS_DIR, root)})
        context = ServingContext.create(policy)
        v1 = shipped_model(settings.generator.models_dir, "1")
        context.cache.acquire(v1)
        messages = flood_of(root, flood)
        open_for = timedelta(seconds=max(records / rate - flood_after, 1.0))
        source: TestingSource[ModelDescriptor] = TestingSource(
            [
                v1,
                TestingSource.PAUSE(timedelta(seconds=flood_after)),
                *messages,
                TestingSource.PAUSE(open_for),
            ],
            batch_size=len(messages) + 1,
        )
        flow = Dataflow("bench-flood")
        data = op.input(
            "data", flow, PollBatches(DataGenerator(records, rate, 1, batch, settings.generator.seed))
        )
        models = op.input("models", flow, source)  # typed as its source: serve() takes any HolderInput
        streams = serve("serve", data, models, context, shards=shards, hold_limit=records)
        results, events = SwapSink(messages[-1].model_name), ArrivalSink[ModelEvent]()
        op.output("results", streams.results, results)
        op.output("events", streams.events, events)
        started = time.perf_counter()
        sampler = _ProcessSampler()
        sampler.start()
        try:
            run_main(flow, epoch_interval=timedelta(seconds=1))
        finally:
            sampler.stop()
        seconds = time.perf_counter() - started

    names = {message.model_name for message in messages}
    verdicts = [(t, e) for t, e in events.arrivals if not e.shard and e.model_name in names]
    arrived = (
        min(t - e.arrival_ms / 1000 for t, e in verdicts if e.kind == EventKind.ACCEPTED)
        if verdicts
        else None
    )
    return report(
        "model-flood",
        records,
        rate,
        seconds,
        results.latency_ms,
        errors=results.errors,
        flood=flood,
        loads_started=context.cache.builds,
        most_loads_at_once=getattr(context.cache, "most_running", None),
        accepted=sum(e.kind == EventKind.ACCEPTED for _, e in verdicts),
        rejected=sum(e.kind == EventKind.REJECTED for _, e in verdicts),
        settled_s=round(max(t for t, _ in verdicts) - arrived, 2) if arrived is not None else None,
        max_latency_ms=round(float(np.max(results.latency_ms)), 1),
        peak_rss_mb=round(sampler.peak_rss_mb),
        peak_threads=sampler.peak_threads,
        peak_children=sampler.peak_children,
        shards=shards,
    )
