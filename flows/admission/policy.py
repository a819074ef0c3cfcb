"""The limits and trust settings model admission enforces, in one immutable object."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from flows.admission.graph import DEFAULT_ALLOWED_OPS
from flows.admission.signing import parse_trusted_keys
from flows.settings import SHIPPED_MODELS_DIR, Settings


@dataclass(frozen=True)
class AdmissionPolicy:
    """What a new model may cost and must satisfy; see `flows.settings` for each field's meaning."""

    load_timeout_s: float = 60.0
    max_loads: int = 2
    max_model_bytes: int = 100 * 1024**2
    max_unpacked_bytes: int = 256 * 1024**2
    max_files: int = 1_000
    unpack_timeout_s: float = 10.0
    unpack_memory_bytes: int = 512 * 1024**2
    output_low: float = 0.0
    output_high: float = 1.0
    trusted_keys: tuple[bytes, ...] = ()  # raw 32-byte Ed25519 public keys
    model_roots: tuple[Path, ...] = (SHIPPED_MODELS_DIR,)
    max_name_chars: int = 200
    max_description_chars: int = 2_000
    remote_max_timeout_s: float = 10.0
    remote_max_retries: int = 3
    allowed_ops: frozenset[str] = field(default=DEFAULT_ALLOWED_OPS, repr=False)


def parse_output_range(text: str) -> tuple[float, float]:
    """`"LOW,HIGH"` as two finite floats with LOW <= HIGH, or ValueError."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"output range {text!r} is not LOW,HIGH (e.g. 0,1)") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"output range {text!r} must be two finite numbers, LOW <= HIGH")
    return low, high


def admission_policy(settings: Settings) -> AdmissionPolicy:
    """The policy the `SERVING_MODEL_*` / `SERVING_REMOTE_*` settings describe; ValueError if one is malformed."""
    low, high = parse_output_range(settings.model_output_range)
    return AdmissionPolicy(
        load_timeout_s=settings.model_load_timeout,
        max_loads=settings.model_max_loads,
        max_model_bytes=settings.model_max_bytes,
        max_unpacked_bytes=settings.model_max_unpacked_bytes,
        max_files=settings.model_max_files,
        unpack_timeout_s=settings.model_unpack_timeout,
        unpack_memory_bytes=settings.model_unpack_memory,
        output_low=low,
        output_high=high,
        trusted_keys=parse_trusted_keys(settings.model_trusted_keys),
        model_roots=tuple(Path(root.strip()) for root in settings.model_roots.split(",") if root.strip()),
        max_name_chars=settings.model_max_name_chars,
        max_description_chars=settings.model_max_description_chars,
        remote_max_timeout_s=settings.remote_max_timeout,
        remote_max_retries=settings.remote_max_retries,
    )
