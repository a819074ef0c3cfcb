"""Model descriptors as the lifecycle tests send them: signed, as a canary, as a command, and the policy
that trusts given keys."""

from __future__ import annotations

from dataclasses import replace

from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.signing import raw_public_key, sign
from flows.core.descriptors import CANARY, CHALLENGER, ModelDescriptor, ModelType


def signed(descriptor: ModelDescriptor, key, sequence: int) -> ModelDescriptor:
    return sign(replace(descriptor, sequence=sequence), key)


def canary(model: ModelDescriptor, fraction: float = 0.5) -> ModelDescriptor:
    return replace(model, role=CHALLENGER, mode=CANARY, fraction=fraction)


def command(which: str, target: ModelDescriptor) -> ModelDescriptor:
    return ModelDescriptor(
        target.model_name, "", ModelType.UNKNOWN, command=which, target_digest=target.digest
    )


def trusting(*keys) -> AdmissionPolicy:
    return AdmissionPolicy(trusted_keys=tuple(raw_public_key(key.public_key()) for key in keys))
