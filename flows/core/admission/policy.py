"""The limits and trust settings model admission enforces, in one immutable, typed object.

The fields' defaults and descriptions are the one source of both: the runtime reads them from
`SERVING_MODEL_*` (and `SERVING_REMOTE_*` for `remote`) environment variables (`flows.runtime.settings`), and
docs/configuration.md's table is generated from them. Nothing here reads the environment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import NoDecode

from flows.core.admission.saved_model_ops import DEFAULT_ALLOWED_OPS
from flows.core.admission.signing import parse_trusted_keys
from flows.core.descriptors import ModelType
from flows.core.errors import ConfigurationError
from flows.core.sections import SHOWN_DEFAULT, Section, comma_separated, parsed_text
from flows.core.shipped import SHIPPED_MODELS_DIR

# The types a scorer exists for (`flows.adapters.scorers`); H2O and PFA are answered with why not.
SERVED_TYPES = (
    ModelType.TENSORFLOWSAVED,
    ModelType.ONNX,
    ModelType.PMML,
    ModelType.TENSORFLOWSERVING,
    ModelType.OPENINFERENCE,
)


def parse_model_types(text: str) -> tuple[ModelType, ...]:
    """`"ONNX, pmml"` as model types (names in any case), or ValueError naming the types served."""
    types = []
    for name in comma_separated(text):
        kind = ModelType.__members__.get(name.upper())
        if kind not in SERVED_TYPES:
            served = ", ".join(t.value for t in SERVED_TYPES)
            raise ConfigurationError(f"model type {name!r} is not one this flow serves ({served})")
        types.append(kind)
    if not types:
        raise ConfigurationError("no model type given: name at least one")
    return tuple(types)


class RemoteLimits(Section):
    """What a model-server location may ask for (`SERVING_REMOTE_*`)."""

    max_timeout: float = Field(
        10.0, gt=0, description="highest `timeout` a model-server location may ask for, seconds"
    )
    max_retries: int = Field(3, ge=0, description="highest `retries` a model-server location may ask for")


class AdmissionPolicy(Section):
    """What a new model may cost and must satisfy (`SERVING_MODEL_*`): see docs/security.md."""

    load_timeout: float = Field(
        60.0,
        gt=0,
        description=(
            "seconds a new model may take from arrival to ready (unpack, inspect, load, probe); past it, "
            "rejected. The flow's import of a runtime for its first model of a kind (TensorFlow: 9 to 72 s "
            "measured on two busy cores) does not count"
        ),
    )
    max_loads: int = Field(
        2,
        ge=1,
        description=(
            "model loads (a thread and an unpacking child each) a process runs at once; the others wait in "
            "arrival order, their deadline running, and one that a newer message of its role supersedes "
            "while it waits is dropped unloaded"
        ),
    )
    max_bytes: int = Field(
        100 * 1024**2, ge=1, description="largest inline model archive (100 MiB), refused before unpacking"
    )
    max_unpacked_bytes: int = Field(
        256 * 1024**2,
        ge=1,
        description=(
            "largest uncompressed archive (256 MiB, tar headers included); also the per-file size limit of "
            "the unpacking child"
        ),
    )
    max_files: int = Field(1_000, ge=1, description="most files and directories in a model archive")
    unpack_timeout: float = Field(
        10.0,
        gt=0,
        description=(
            "seconds (wall clock, and CPU) the unpacking child may take before it is killed; an embedded "
            "SavedModel's trial gets as long again, counted from the end of TensorFlow's import"
        ),
    )
    unpack_memory: int = Field(
        512 * 1024**2,
        ge=64 * 1024**2,
        description=(
            "address-space limit of the unpacking child (512 MiB), which also opens an embedded ONNX model "
            "and scores its trial batches"
        ),
    )
    tf_import_timeout: float = Field(
        30.0,
        gt=0,
        description=(
            "seconds (wall clock, and CPU) the admission child may take to import TensorFlow before an "
            "embedded SavedModel's trial (5 to 13 s measured on a loaded 2-core machine); with the unpacking "
            "and the trial, within SERVING_MODEL_LOAD_TIMEOUT"
        ),
    )
    trial_memory: int = Field(
        1536 * 1024**2,
        ge=64 * 1024**2,
        description=(
            "resident memory the admission child may reach while it imports TensorFlow and runs an embedded "
            "SavedModel's trial (1.5 GiB: TensorFlow alone takes ~700 MB, the shipped models ~70 MB more); "
            "past it, a watchdog ends the child and the model is refused"
        ),
    )
    max_batch_pairs: int = Field(
        50_000,
        ge=1,
        description=(
            "most (user, product) pairs in one model call: the flow splits a larger micro-batch into calls "
            "of at most this many, and an embedded model (ONNX, SavedModel or PMML) must score a batch this "
            "large in its trial, within the child's memory and time, before it is accepted; at least "
            "SERVING_MAX_PRODUCTS"
        ),
    )
    max_call_seconds: float = Field(
        2.0,
        gt=0,
        description=(
            "longest an embedded model (ONNX, SavedModel or PMML) may take, in its trial, to score "
            "SERVING_MODEL_MAX_BATCH_PAIRS pairs; a slower model is refused"
        ),
    )
    output_range: Annotated[tuple[float, float], NoDecode, parsed_text(parse_output_range)] = Field(
        (0.0, 1.0),
        description=(
            "`LOW,HIGH`: a model whose probe scores are not finite or outside is refused; such a score at "
            "scoring time makes that record's result an error"
        ),
        json_schema_extra={SHOWN_DEFAULT: "`0,1`"},
    )
    trusted_keys: Annotated[tuple[bytes, ...], NoDecode, parsed_text(parse_trusted_keys)] = Field(
        (),
        description=(
            "Ed25519 public keys (base64, or PEM file paths), comma-separated; set, only descriptors signed "
            "by one of them are accepted"
        ),
    )
    roots: Annotated[tuple[Path, ...], NoDecode, parsed_text(comma_separated)] = Field(
        (SHIPPED_MODELS_DIR,),
        description="directories local model paths must lie under, comma-separated",
        json_schema_extra={SHOWN_DEFAULT: "the shipped models' directory"},
    )
    types: Annotated[tuple[ModelType, ...], NoDecode, parsed_text(parse_model_types)] = Field(
        SERVED_TYPES,
        description=(
            "the model types this deployment serves, comma-separated (e.g. `ONNX`); a descriptor of another "
            "type is refused before anything is loaded, so its runtime is never imported and the pods' "
            "memory need not allow for it (TensorFlow: about 700 MB)"
        ),
        json_schema_extra={SHOWN_DEFAULT: "`" + ",".join(t.value for t in SERVED_TYPES) + "`"},
    )
    max_name_chars: int = Field(200, ge=1, description="longest model name accepted")
    max_description_chars: int = Field(2_000, ge=0, description="longest model description accepted")
    remote: RemoteLimits = RemoteLimits()

    @property
    def output_low(self) -> float:
        return self.output_range[0]

    @property
    def output_high(self) -> float:
        return self.output_range[1]

    @property
    def allowed_ops(self) -> frozenset[str]:
        """The TensorFlow ops a SavedModel's graph may use (a constant of the graph inspection, not a
        setting)."""
        return DEFAULT_ALLOWED_OPS


def parse_output_range(text: str) -> tuple[float, float]:
    """`"LOW,HIGH"` as two finite floats with LOW <= HIGH, or ValueError."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigurationError(f"output range {text!r} is not LOW,HIGH (e.g. 0,1)") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ConfigurationError(f"output range {text!r} must be two finite numbers, LOW <= HIGH")
    return low, high
