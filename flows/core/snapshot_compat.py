"""Reading recovery snapshots written by older versions of the flow.

Recovery snapshots are pickles of the stateful steps' states (`flows.core.model_holder.HolderState`,
`flows.core.shard.ShardState`, the sources' offsets and what they hold), kept across upgrades: a flow
restarted on a new version resumes from what the old one wrote. What keeps that working, in one place:

* A slots dataclass pickles its field values as a tuple, in field order. A field is only ever added at
  the end, with a default, and the class unpickles with `restore_with_defaults` (its `__setstate__`), so
  a snapshot from before the field holds fewer values and the new ones keep their defaults:
  `ModelDescriptor` (before the challenger and freshness fields), `HolderState` (before any of its
  fields after the champion).
* A plain dataclass (`ShardState`) pickles its `__dict__`: a field the snapshot lacks reads the class
  default (`challenger`, from before challengers).
* A class whose pickled form changed shape reads the old one in its own `__setstate__`:
  `flows.adapters.kafka.data_source.KafkaOrigin` (frozen, without `covers_from`, until 2026-11-30).
* The holder's state was once a bare `ModelDescriptor` (before challengers): `ModelHolderLogic` takes it.
* Snapshots from before the string enums of `flows.core.vocabulary` hold plain strings, which compare
  equal to the members.
* A pickle names each class by its module path: `flows.moved` answers the paths of older layouts, and
  the classes that left `flows.core.records` for modules of their own.

Fields are never renamed, reordered or removed, and a step id never changes
(tests/in_process/test_recovery.py loads snapshots written by 0.1.0).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any


def restore_with_defaults(instance: Any, state: tuple) -> None:
    """Unpickle a slots dataclass (frozen or not) from `state`, its fields' values in order: a recovery
    snapshot written before the class gained fields at its end holds fewer, and those keep their defaults."""
    for index, field_ in enumerate(fields(instance)):
        if index < len(state):
            value = state[index]
        elif field_.default_factory is not MISSING:
            value = field_.default_factory()
        else:
            value = field_.default
        object.__setattr__(instance, field_.name, value)
