"""What an explanation costs, per explained record: the `explain-cost` scenario.

A micro-batch of 1,000 generated records is scored once with the model; then its explanations are timed,
with 1 and with 16 records asking (the default per-batch bound), interleaved and repeated: the median time of
`Explainer.explain` divided by the records it explained. The model is a shipped one in process (an embedded
model with embedding tables also looks its neighbours up) or, with `--via`, the same version behind a local
server (TensorFlow Serving's stand-in or MLServer), where the split is a black box's over the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from flows.adapters.scorers import build_scorer
from flows.adapters.sources.generators import generated_records
from flows.bench.report import report
from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import ModelDescriptor
from flows.core.explanations import Background, Explainer, ExplainSettings
from flows.core.records import DataMessage
from flows.core.scoring import score_batch

ASKING = (1, 16)
RECORDS = 1_000


@dataclass(frozen=True)
class _Asking:
    explanation_requested: bool = True


def run_explain_cost(model: ModelDescriptor, rounds: int, seed: int) -> dict:
    """Median ms of explaining 1 and 16 records of a 1,000-record batch, and per explained record."""
    scorer = build_scorer(model)
    settings = ExplainSettings(fraction=0)
    explainer = Explainer(settings, AdmissionPolicy(), seed=seed)
    records = list(generated_records(seed, RECORDS))
    batches = {}
    for asking in ASKING:
        messages = [DataMessage(r, 0, _Asking() if i < asking else None) for i, r in enumerate(records)]
        batches[asking], _ = score_batch(scorer, model.model_name, messages, AdmissionPolicy())
    bounds = scorer.input_bounds

    def background() -> Background:
        return Background.spread_over(bounds, settings.background) if bounds else Background()

    for batch in batches.values():
        explainer.explain(batch, scorer, background())  # warm-up
    times: dict[int, list[float]] = {asking: [] for asking in ASKING}
    started = time.perf_counter()
    for round_ in range(rounds):
        for asking in ASKING if round_ % 2 == 0 else ASKING[::-1]:
            fresh = background()  # (a black box's is taken from the batch, as a shard's first batch does)
            begin = time.perf_counter_ns()
            explained = explainer.explain(batches[asking], scorer, fresh)
            times[asking].append((time.perf_counter_ns() - begin) / 1e6)
            if len(explained) != asking or any(item.explanation.errors for item in explained):
                raise SystemExit(f"bench: explaining {asking} records gave {explained[:1]}")
    seconds = time.perf_counter() - started
    neighbours = getattr(scorer, "embeddings", None) is not None
    scorer.close()
    details = {}
    for asking, found in times.items():
        median = float(np.median(found))
        details[f"explain_ms_{asking}_records"] = round(median, 4)
        details[f"ms_per_explained_{asking}_records"] = round(median / asking, 4)
    return report(
        "explain-cost", rounds * sum(ASKING), "unthrottled", seconds,
        [time_ms for found in times.values() for time_ms in found], model=model.model_name,
        source=scorer.source, neighbours=neighbours, background=settings.background, **details,
    )  # fmt: skip
