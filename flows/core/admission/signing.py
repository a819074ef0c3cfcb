"""Signed model descriptors: Ed25519 signatures over everything the flow acts on.

A signature covers the model's name, description, type and either the SHA-256 of its bytes or its
location, each length-prefixed so no two descriptors share a signed message (a descriptor carrying both
bytes and a location is refused: `flows.core.admission.descriptor_checks`). A challenger or a command
(`flows.core.challenger`) also signs its role, mode, fraction and command, so a signed challenger cannot be
replayed as a champion, nor a command forged; and every message signed by `sign` carries a signed
sequence, expiry and, for a command, the digest of its target (`flows.core.admission.freshness` refuses
replays). Fields left at their defaults are not part of the message, so signatures made before a field
existed still verify (and are then refused as not fresh, with the reason). With trusted keys configured,
a descriptor whose signature does not verify under one of them is refused before anything is unpacked or
any server is contacted: once, by the model holder; what it accepted is the flow's own state after that. Keys:
a private key is a PKCS#8 PEM file; a public key is a PEM file or the base64 of its 32 raw bytes (what
`python -m flows.tools.model_keys` prints for SERVING_MODEL_TRUSTED_KEYS).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flows.core.descriptors import CHAMPION, ModelDescriptor
from flows.core.errors import ConfigurationError

DOMAIN = b"bytewax-model-serving/ModelDescriptor/v1"
EXPERIMENT_DOMAIN = b"bytewax-model-serving/ModelDescriptor/experiment/v1"
FRESHNESS_DOMAIN = b"bytewax-model-serving/ModelDescriptor/freshness/v1"
SIGNATURE_BYTES = 64
PLAIN_CHAMPION = (CHAMPION, "", 1.0, "")


def signed_message(descriptor: ModelDescriptor) -> bytes:
    """The bytes a descriptor's signature is over (never the model bytes themselves: their SHA-256)."""
    if descriptor.model_bytes:
        content = b"bytes:" + hashlib.sha256(descriptor.model_bytes).digest()
    else:
        content = b"location:" + (descriptor.model_source_location or "").encode()
    fields: tuple[bytes, ...] = (
        DOMAIN,
        descriptor.model_name.encode(),
        descriptor.description.encode(),
        descriptor.model_type.value.encode(),
        content,
    )
    if (descriptor.role, descriptor.mode, descriptor.fraction, descriptor.command) != PLAIN_CHAMPION:
        fields += (
            EXPERIMENT_DOMAIN,
            descriptor.role.encode(),
            descriptor.mode.encode(),
            repr(float(descriptor.fraction)).encode(),
            descriptor.command.encode(),
        )
    if descriptor.sequence or descriptor.expires_at or descriptor.target_digest:
        fields += (
            FRESHNESS_DOMAIN,
            str(descriptor.sequence).encode(),
            str(descriptor.expires_at).encode(),
            descriptor.target_digest.encode(),
        )
    return length_prefixed(fields)


def length_prefixed(fields: Iterable[bytes]) -> bytes:
    """The fields joined, each after its length (8 bytes, big-endian): no two lists of fields join alike."""
    return b"".join(struct.pack(">Q", len(part)) + part for part in fields)


def sign(descriptor: ModelDescriptor, private_key: Ed25519PrivateKey) -> ModelDescriptor:
    """`descriptor` carrying its signature by `private_key`, stamped with a fresh sequence (the time in
    microseconds since the epoch) unless it has one: a newer message from the same key always wins."""
    if not descriptor.sequence:
        descriptor = replace(descriptor, sequence=time.time_ns() // 1_000)
    return replace(descriptor, signature=private_key.sign(signed_message(descriptor)))


def signer(descriptor: ModelDescriptor, trusted_keys: Iterable[bytes]) -> tuple[bytes, str | None]:
    """The raw public key that signed `descriptor` and None; or b"" and why no trusted key did."""
    if not descriptor.signature:
        return b"", "model is not signed, and SERVING_MODEL_TRUSTED_KEYS requires a signature"
    if len(descriptor.signature) != SIGNATURE_BYTES:
        return b"", (
            f"signature is {len(descriptor.signature)} bytes, not an Ed25519 signature ({SIGNATURE_BYTES})"
        )
    raw_key = signing_key(descriptor.signature, signed_message(descriptor), trusted_keys)
    if raw_key is None:
        return b"", "signature does not verify under any key in SERVING_MODEL_TRUSTED_KEYS"
    return raw_key, None


def verify(descriptor: ModelDescriptor, trusted_keys: Iterable[bytes]) -> str | None:
    """None if one of the raw public keys signed `descriptor`, else why not."""
    return signer(descriptor, trusted_keys)[1]


def signing_key(signature: bytes, message: bytes, trusted_keys: Iterable[bytes]) -> bytes | None:
    """The raw Ed25519 public key, of `trusted_keys`, that made `signature` over `message`, or None."""
    for raw_key in trusted_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, message)
            return raw_key
        except InvalidSignature:
            continue
    return None


def signed_by_any(signature: bytes, message: bytes, trusted_keys: Iterable[bytes]) -> bool:
    """Whether one of the raw Ed25519 public keys made `signature` over `message`."""
    return signing_key(signature, message, trusted_keys) is not None


def key_id(raw_key: bytes) -> str:
    """A short, stable name for a public key, for reasons and the freshness marks."""
    return hashlib.sha256(raw_key).hexdigest()[:12]


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file `path`, or ConfigurationError naming the file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigurationError(f"{path}: not an unencrypted PEM private key ({error})") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def parse_trusted_keys(text: str) -> tuple[bytes, ...]:
    """Raw public keys from a comma-separated list of base64 keys or PEM file paths, or ConfigurationError."""
    keys = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        if Path(entry).is_file():
            try:
                key = serialization.load_pem_public_key(Path(entry).read_bytes())
            except ValueError as error:
                raise ConfigurationError(
                    f"trusted key file {entry}: not a PEM public key ({error})"
                ) from error
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigurationError(f"trusted key file {entry}: not an Ed25519 key")
            keys.append(raw_public_key(key))
            continue
        try:
            raw = base64.b64decode(entry, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != 32:
            raise ConfigurationError(
                f"trusted key {entry[:60]!r} is neither a PEM file nor a base64 Ed25519 key (32 bytes)"
            )
        keys.append(raw)
    return tuple(keys)
