"""Descriptors that must not become scorers, each with the words its rejection must contain."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from flows.adapters.scorers.archive import pack_directory
from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.shipped import SHIPPED_MODELS_DIR


def _tar(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for member in members:
            if member.isfile():
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
            else:
                archive.addfile(member)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    return member


def wrong_signature_model(directory: Path) -> bytes:
    """A SavedModel whose serving_default takes `x` and returns `y`: loadable, but not a recommender."""
    tf = tensorflow()

    class Doubler(tf.Module):  # type: ignore[name-defined]  # a base from TensorFlow, imported at run time
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2}

    module = Doubler()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return pack_directory(directory)


def bad_models(v1: ModelDescriptor, scratch: Path) -> list[tuple[ModelDescriptor, str]]:
    saved = ModelType.TENSORFLOWSAVED
    assert v1.model_bytes is not None  # the shipped model, sent inline
    return [
        (ModelDescriptor("corrupt", "", saved, b"\x00garbage" * 100), "not a readable tar archive"),
        (
            ModelDescriptor("truncated", "", saved, v1.model_bytes[: len(v1.model_bytes) // 2]),
            "not a readable tar",
        ),
        (ModelDescriptor("pmml", "", ModelType.PMML, b"<PMML/>"), "namespace '' is not PMML 4.x"),
        (ModelDescriptor("mojo", "", ModelType.H2O, b"PK\x03\x04"), "an H2O MOJO is not run in process"),
        (
            ModelDescriptor("unknown", "", ModelType.UNKNOWN, v1.model_bytes),
            "model type UNKNOWN is not supported",
        ),
        (
            ModelDescriptor("wrong-signature", "", saved, wrong_signature_model(scratch / "doubler")),
            "expected inputs ['users', 'products']",
        ),
        (
            ModelDescriptor("not-a-savedmodel", "", saved, _tar([_member("hello.txt")])),
            "saved_model.pb does not exist",
        ),
        (
            ModelDescriptor("escape-dotdot", "", saved, _tar([_member("../evil.txt")])),
            "unsafe archive member",
        ),
        (
            ModelDescriptor("escape-absolute", "", saved, _tar([_member("/tmp/evil.txt")])),
            "unsafe archive member",
        ),
        (
            ModelDescriptor("escape-symlink", "", saved, _tar([_member("link", tarfile.SYMTYPE, "/etc")])),
            "unsafe archive member",
        ),
        (ModelDescriptor("no-model", "", saved, None, None), "neither model bytes nor a model location"),
        (
            ModelDescriptor("missing-path", "", saved, None, str(SHIPPED_MODELS_DIR / "absent")),
            "no SavedModel directory",
        ),
        (
            ModelDescriptor("outside-roots", "", saved, None, str(scratch)),
            "is not under an allowed root",
        ),
        (
            ModelDescriptor("escape-roots", "", saved, None, str(SHIPPED_MODELS_DIR / ".." / "..")),
            "is not under an allowed root",
        ),
    ]
