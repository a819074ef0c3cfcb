"""Checks on a model descriptor's content that cost microseconds, made before anything is unpacked or
contacted. Its signature and freshness are the model holder's to check, once
(`flows.core.admission.freshness`)."""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlparse

from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import (
    CANARY,
    CHALLENGER,
    CHAMPION,
    PROMOTE,
    RETIRE,
    SHADOW,
    ModelDescriptor,
    ModelType,
)
from flows.core.errors import ServingError


class LocationRefused(ServingError, ValueError):
    """A model location the policy does not allow, with the reason."""


def local_path(location: str) -> Path:
    """The directory named by a plain path or a file:// URL, or ValueError for any other scheme."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme:
        raise LocationRefused(f"location {location[:200]!r} is not a local path (scheme {parsed.scheme!r})")
    return Path(location)


def allowed_local_directory(location: str, roots: tuple[Path, ...]) -> Path:
    """The real directory `location` names, or ValueError unless it lies under one of `roots`.

    Symbolic links are resolved first, so a link under a root cannot point the flow elsewhere.
    """
    directory = local_path(location).resolve()
    for root in roots:
        if directory.is_relative_to(root.resolve()):
            return directory
    allowed = ", ".join(str(root) for root in roots) or "none configured"
    raise LocationRefused(
        f"local model path {str(directory)[:200]} is not under an allowed root "
        f"(SERVING_MODEL_ROOTS: {allowed})"
    )


def refusal(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> str | None:
    """Why `descriptor` is refused outright, or None if it may go on to be loaded."""
    if len(descriptor.model_name) > policy.max_name_chars:
        return (
            f"model name is {len(descriptor.model_name):,} characters, over the limit of "
            f"{policy.max_name_chars} (SERVING_MODEL_MAX_NAME_CHARS)"
        )
    if len(descriptor.description) > policy.max_description_chars:
        return (
            f"description is {len(descriptor.description):,} characters, over the limit of "
            f"{policy.max_description_chars} (SERVING_MODEL_MAX_DESCRIPTION_CHARS)"
        )
    problem = experiment_refusal(descriptor)
    if problem or descriptor.command:
        return problem
    if descriptor.model_bytes and descriptor.model_source_location:
        # The bytes are the model; a location beside them would change its identity (the digest) without
        # being what is served, so one signed message could become many models.
        return "a descriptor carries either model bytes or a location, not both"
    if descriptor.model_bytes and len(descriptor.model_bytes) > policy.max_bytes:
        return (
            f"model bytes are {len(descriptor.model_bytes):,}, over the limit of {policy.max_bytes:,} "
            f"(SERVING_MODEL_MAX_BYTES)"
        )
    is_local = descriptor.model_type is ModelType.TENSORFLOWSAVED and not descriptor.model_bytes
    if is_local and descriptor.model_source_location:
        try:
            allowed_local_directory(descriptor.model_source_location, policy.roots)
        except ValueError as error:
            return str(error)
    return None


def experiment_refusal(descriptor: ModelDescriptor) -> str | None:
    """Why `descriptor`'s role, mode, fraction or command make no sense (see `flows.core.challenger`), or
    None."""
    if descriptor.command:
        if descriptor.command not in (PROMOTE, RETIRE):
            return f"unknown command {descriptor.command[:40]!r} (expected {PROMOTE!r} or {RETIRE!r})"
        if descriptor.model_bytes or descriptor.model_source_location:
            return f"a {descriptor.command} command names a challenger and carries no model"
        return None
    if descriptor.target_digest:
        return "only a command names a target digest"
    if descriptor.role == CHAMPION:
        if descriptor.mode or descriptor.fraction != 1.0:
            return "a champion answers every record: mode and fraction are for a challenger"
        return None
    if descriptor.role != CHALLENGER:
        return f"unknown role {descriptor.role[:40]!r} (expected {CHAMPION!r} or {CHALLENGER!r})"
    if descriptor.mode not in (SHADOW, CANARY):
        return f"a challenger's mode must be {SHADOW!r} or {CANARY!r}, not {descriptor.mode[:40]!r}"
    if not (math.isfinite(descriptor.fraction) and 0 < descriptor.fraction <= 1):
        return f"a challenger's fraction must lie in (0, 1], not {descriptor.fraction!r}"
    return None
