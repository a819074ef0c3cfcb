"""The data generator emits the same records whatever its batch size, a block boundary, a drift boundary or
a restart."""

from __future__ import annotations

import pytest

from flows.adapters.sources.generators import DataGenerator, generated_records


def _emitted(generator: DataGenerator, resume: int | None = None, polls: int | None = None) -> list:
    partition = generator.build_part("data", "data-0", resume)
    records = []
    while polls is None or polls > 0:
        try:
            records += [message.record for message in partition.next_batch()]
        except StopIteration:
            break
        polls = None if polls is None else polls - 1
    return records


@pytest.mark.parametrize("shift_after", [0, 300])
@pytest.mark.parametrize("batch", [1, 100, 256, 1000])
def test_every_batch_size_emits_the_generated_records(batch, shift_after):
    generator = DataGenerator(1_500, 0, batch=batch, seed=9, shift_after=shift_after)
    assert _emitted(generator) == list(generated_records(9, 1_500, shift_after=shift_after))


def test_a_resumed_partition_goes_on_where_it_stopped():
    generator = DataGenerator(1_500, 0, batch=300, seed=9)
    first = _emitted(generator, polls=2)
    assert first + _emitted(generator, resume=len(first)) == list(generated_records(9, 1_500))


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_every_nth_record_asks_for_an_explanation_whatever_the_batch_and_a_restart(batch):
    generator = DataGenerator(1_000, 0, batch=batch, seed=9, explain_every=100)
    partition = generator.build_part("data", "data-0", None)
    asking = []
    emitted = 0
    while emitted < 450:
        for message in partition.next_batch():
            if getattr(message.origin, "explanation_requested", False):
                asking.append(emitted)
            emitted += 1
    partition = generator.build_part("data", "data-0", emitted)  # a restart where it stopped
    while True:
        try:
            batch_messages = partition.next_batch()
        except StopIteration:
            break
        for message in batch_messages:
            if getattr(message.origin, "explanation_requested", False):
                asking.append(emitted)
            emitted += 1
    assert asking == list(range(99, 1_000, 100))
