"""The embedded generators' section of the settings: how many records, how fast, which models in turn.

A frozen, typed model whose fields carry their defaults and descriptions (see `flows.core.sections`); the
runtime reads it from `SERVING_*` variables (their names predate sections, so they keep no common prefix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import NoDecode

from flows.core.sections import SHOWN_DEFAULT, Section, comma_separated, parsed_text
from flows.core.shipped import SHIPPED_MODELS_DIR


class GeneratorSettings(Section):
    """The embedded default's inputs: generated records and a schedule of shipped models."""

    records: int = Field(
        0,
        ge=0,
        description="records the data generator produces before it stops and the run ends (`0`: unbounded)",
    )
    record_rate: float = Field(
        333.0,
        ge=0,
        description=(
            "records per second from the data generator, as the original's one per 3 ms (`0`: as fast as "
            "possible)"
        ),
    )
    generator_partitions: int = Field(
        1, ge=1, description="data generator partitions; each is read by one worker"
    )
    generator_batch: int = Field(500, ge=1, description="most records a generator partition emits at once")
    seed: int = Field(42, description="generator seed: the same seed gives the same records")
    data_shift_after: int = Field(
        10_000,
        ge=0,
        description=(
            "generated records (per generator partition) after which the data drifts for as many again: most "
            "products then come from a newly popular range (the last sixth of the catalogue), so drift "
            "monitoring has something to show (`0`: never)"
        ),
    )
    generator_explain_every: int = Field(
        1_000,
        ge=0,
        description=(
            "every Nth generated record (per partition) asks for an explanation, as a data message with the "
            "`serving-explain` header does (`0`: none)"
        ),
    )
    model_interval: float = Field(
        10.0,
        gt=0,
        description="seconds between model updates from the model generator (the original used 120)",
    )
    model_versions: Annotated[tuple[str, ...], NoDecode, parsed_text(comma_separated)] = Field(
        ("1", "2-onnx:shadow", "promote:2-onnx", "1:canary:0.25", "retire:1"),
        description=(
            "the model generator's schedule, one entry per `SERVING_MODEL_INTERVAL`, round and round: `V` "
            "sends shipped version V (a directory under `SERVING_MODELS_DIR`: a SavedModel, or `model.onnx` "
            "as in the shipped `1-onnx` and `2-onnx`, the ONNX twins of 1 and 2, or `model.pmml` as in "
            "`1-pmml`) as champion; `V:shadow` or "
            "`V:canary:0.25` as a challenger on that fraction (default 1) of records or users; `promote:V` "
            "and `retire:V` act on the challenger `recommender-vV`. `1,2` alternates two champions, as "
            "before challengers existed"
        ),
        json_schema_extra={SHOWN_DEFAULT: "`1,2-onnx:shadow,promote:2-onnx,1:canary:0.25,retire:1`"},
    )
    models_dir: Path = Field(
        SHIPPED_MODELS_DIR,
        description=(
            "directory with one model per version (a SavedModel, or a directory holding `model.onnx` or "
            "`model.pmml`)"
        ),
        json_schema_extra={
            SHOWN_DEFAULT: "the shipped models (`models/recommender` in the repository, package data "
            "`flows.models` when installed)"
        },
    )
