"""Module paths from before the package was laid out by layer (core, wire, adapters, runtime), still
importable.

Recovery snapshots are pickles, and a pickle names each object's class by its module path: a store written
before the move names `flows.model_holder.HolderState`, `flows.kafka.data_source.KafkaOrigin`, ... A finder
on `sys.meta_path` (installed when `flows` is imported) answers those paths with the modules that hold the
classes now, so old stores resume (tests/in_process/test_recovery.py loads snapshots written by 0.1.0).
Nothing in the package imports an old path.

A class can also leave a module that stays: `MOVED_NAMES` lists those, and the module they left answers
their old names with a module `__getattr__` (PEP 562) that calls `moved_attribute`. Pickle looks a class up
as an attribute of its module, so `flows.core.records.ModelDescriptor` (or, through the finder, 0.1.0's
`flows.records.ModelDescriptor`) unpickles as `flows.core.descriptors.ModelDescriptor`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

# Old path (a module, or a package and everything under it) -> where it lives now.
MOVED = {
    "flows.records": "flows.core.records",
    "flows.vocabulary": "flows.core.vocabulary",
    "flows.errors": "flows.core.errors",
    "flows.sections": "flows.core.sections",
    "flows.shipped": "flows.core.shipped",
    "flows.scoring": "flows.core.scoring",
    "flows.shard": "flows.core.shard",
    "flows.model_holder": "flows.core.model_holder",
    "flows.challenger": "flows.core.challenger",
    "flows.drift": "flows.core.drift",
    "flows.dataflow": "flows.core.dataflow",
    "flows.context": "flows.core.context",
    "flows.admission": "flows.core.admission",
    "flows.observability.serving_state": "flows.core.serving_state",
    "flows.observability.telemetry": "flows.core.telemetry",
    "flows.observability.state_server": "flows.adapters.observability.state_server",
    "flows.observability_setup": "flows.runtime.observability",
    "flows.observability": "flows.adapters.observability",
    "flows.scorers.base": "flows.core.scorer",
    "flows.scorers.cache": "flows.core.scorer_cache",
    "flows.scorers": "flows.adapters.scorers",
    "flows.avro": "flows.wire.avro",
    "flows.record_polls": "flows.wire.record_polls",
    "flows.kafka": "flows.adapters.kafka",
    "flows.sinks": "flows.adapters.sinks",
    "flows.sources": "flows.adapters.sources",
    "flows.tensorflow_runtime": "flows.adapters.scorers.tensorflow_runtime",
    "flows.settings": "flows.runtime.settings",
    "flows.app": "flows.runtime.app",
    "flows.shutdown": "flows.runtime.shutdown",
}

# Classes that left a module that still exists: module -> {class name: the module that holds it now}.
MOVED_NAMES: dict[str, dict[str, str]] = {
    "flows.core.records": {
        "ModelType": "flows.core.descriptors",
        "ModelDescriptor": "flows.core.descriptors",
        "ModelToServeStats": "flows.core.events",
        "ChallengerReport": "flows.core.events",
        "ModelEvent": "flows.core.events",
        "SignedModelEvent": "flows.core.events",
    },
    # None of these is in a snapshot (a shard's holds its ShardState, which stays); each is pickled on its
    # way between processes, and an old pickle of one still loads.
    "flows.core.shard": {
        "ShardBatch": "flows.core.routing",
        "_unpickled_batch": "flows.core.routing",  # not a class: what a ShardBatch's pickle calls
        "ModelUpdate": "flows.core.shard_messages",
        "ChallengerEnd": "flows.core.shard_messages",
        "Emits": "flows.core.shard_messages",
    },
}


# The most specific old path first (`flows.observability.telemetry` before `flows.observability`).
_MOST_SPECIFIC_FIRST = sorted(MOVED, key=len, reverse=True)


def moved_to(name: str) -> str | None:
    """Where the module once at `name` is now, or None if it did not move. The finder is asked about every
    import of the process, so anything outside `flows` is answered at once."""
    if not name.startswith("flows."):
        return None
    for old in _MOST_SPECIFIC_FIRST:
        if name == old or name.startswith(old + "."):
            return MOVED[old] + name[len(old) :]
    return None


def moved_attribute(module: str, name: str) -> object:
    """The class `name` that left `module` (see `MOVED_NAMES`), for that module's `__getattr__`; an
    AttributeError, as for any missing attribute, if it never was there."""
    new = MOVED_NAMES.get(module, {}).get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return getattr(importlib.import_module(new), name)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as the module now at its new one (the same module object, not a copy)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if moved_to(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        return importlib.import_module(moved_to(spec.name))  # type: ignore[arg-type]

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported under its new path."""


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())  # before any path finder: an old path is never a file
