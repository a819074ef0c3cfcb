"""The SavedModel protobuf schema, without importing TensorFlow.

Importing ``tensorflow.core.protobuf.saved_model_pb2`` imports all of TensorFlow (~7 s), and TF 2.21 no
longer installs tensorboard (whose ``tensorboard.compat.proto`` copy was the usual light alternative);
tensorflow-serving-api and tritonclient do not carry their own copy either. So the schema is taken from the
serialized ``FileDescriptorProto`` embedded in TensorFlow's installed ``*_pb2.py`` files, read as *source*
(with ``ast``, nothing of TensorFlow is executed or imported) into a private ``DescriptorPool``, so it
cannot clash with TensorFlow's own registrations if TF is imported later. Cost: ~40 ms once.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pathlib
from typing import TYPE_CHECKING

from flows.core.errors import ServingError

if TYPE_CHECKING:
    from google.protobuf.message import Message

_ROOT_PROTO = "tensorflow/core/protobuf/saved_model.proto"


class SchemaUnavailable(ServingError, RuntimeError):
    """The SavedModel schema cannot be read from the installed TensorFlow, with the reason."""


def _serialized_descriptor(pb2_file: pathlib.Path) -> bytes:
    """The bytes a generated ``*_pb2.py`` passes to ``AddSerializedFile``, read without running it."""
    for node in ast.walk(ast.parse(pb2_file.read_bytes(), filename=str(pb2_file))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    raise SchemaUnavailable(f"no serialized descriptor found in {pb2_file}")


@functools.cache
def saved_model_message_class() -> type[Message]:
    """The ``tensorflow.SavedModel`` message class, built in a private descriptor pool."""
    from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    spec = importlib.util.find_spec("tensorflow")  # locates the package, does not import it
    if spec is None or not spec.submodule_search_locations:
        raise SchemaUnavailable("tensorflow is not installed: cannot find the SavedModel .proto schema")
    site = pathlib.Path(next(iter(spec.submodule_search_locations))).parent

    pool = descriptor_pool.DescriptorPool()
    builtin = {
        "google/protobuf/any.proto": any_pb2,
        "google/protobuf/wrappers.proto": wrappers_pb2,
    }
    added: set[str] = set()

    def add(proto: str) -> None:
        if proto in added:
            return
        if proto in builtin:
            data = builtin[proto].DESCRIPTOR.serialized_pb
        elif proto.startswith("tensorflow/") and proto.endswith(".proto"):
            data = _serialized_descriptor(site / (proto[: -len(".proto")] + "_pb2.py"))
        else:
            raise SchemaUnavailable(f"unexpected dependency {proto!r} of the SavedModel schema")
        file_proto = descriptor_pb2.FileDescriptorProto.FromString(data)
        for dependency in file_proto.dependency:
            add(dependency)
        pool.Add(file_proto)
        added.add(proto)

    add(_ROOT_PROTO)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.SavedModel"))


def parse_saved_model(data: bytes):
    """Parse ``saved_model.pb`` bytes into a ``tensorflow.SavedModel`` message (private pool)."""
    return saved_model_message_class().FromString(data)
