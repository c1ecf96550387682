from collections import Counter

import numpy as np
import pytest

from hf_cllm4rec.data.documents import ScheduledDocuments
from hf_cllm4rec.training import ScheduleBatchSampler


def batches_of(sampler, epoch: int = 0):
    sampler.set_epoch(epoch)
    return [list(batch) for batch in sampler]


def epochs_batches(sampler, epochs: int):
    """The batches of epochs `0 .. epochs - 1`, one list per epoch."""
    return [batches_of(sampler, epoch) for epoch in range(epochs)]


def source_of(batch) -> int:
    sources = {source for source, _, _ in batch}
    assert len(sources) == 1, f"a batch mixes sources {sorted(sources)}"
    return sources.pop()


def draws_of(batches) -> dict[tuple[int, int], list[int]]:
    """The indices of every draw, keyed by `(source, draw)`, in the order they come."""
    draws = {}
    for batch in batches:
        for source, draw, index in batch:
            draws.setdefault((source, draw), []).append(index)
    return draws


def test_every_epoch_is_a_round_with_one_draw_of_each_source():
    sizes = [23, 10]
    sampler = ScheduleBatchSampler(sizes, (0, 1), batch_size=4)
    epochs = epochs_batches(sampler, 3)
    for epoch, batches in enumerate(epochs):
        assert len(batches) == len(sampler) == sampler.steps_per_epoch == 6 + 3
        for batch in batches:
            source_of(batch)
            assert 1 <= len(batch) <= 4
        draws = draws_of(batches)
        # round r is draw r of every source: the order of documents of the schedule before rounds were epochs
        assert sorted(draws) == [(0, epoch), (1, epoch)]
        for (source, _), indices in draws.items():
            assert sorted(indices) == list(range(sizes[source]))


def test_epoch_alternation_runs_the_sources_of_a_round_in_order():
    sampler = ScheduleBatchSampler([10, 6], (0, 1), batch_size=4)
    assert [source_of(batch) for batch in batches_of(sampler, 1)] == [0, 0, 0, 1, 1]
    sampler = ScheduleBatchSampler([10, 6], (1, 0), batch_size=4)
    assert [source_of(batch) for batch in batches_of(sampler, 1)] == [1, 1, 0, 0, 0]


def test_batch_alternation_interleaves_evenly():
    sampler = ScheduleBatchSampler([12, 4], (0, 1), batch_size=2, alternation="batch")
    # six collaborative batches and two content batches: one content batch in each half of the round
    assert [source_of(batch) for batch in batches_of(sampler)] == [0, 0, 1, 0, 0, 0, 1, 0]
    sampler = ScheduleBatchSampler([8, 8], (0, 1), batch_size=2, alternation="batch")
    assert [source_of(batch) for batch in batches_of(sampler, 1)] == [0, 1] * 4


def test_every_draw_is_a_new_permutation_and_the_same_seed_repeats_it():
    sampler = ScheduleBatchSampler([50], (0,), batch_size=8, seed=1)
    epochs = epochs_batches(sampler, 4)
    orders = [tuple(draws_of(batches)[0, epoch]) for epoch, batches in enumerate(epochs)]
    assert len(set(orders)) == 4
    assert all(order != tuple(range(50)) for order in orders)
    assert epochs == epochs_batches(ScheduleBatchSampler([50], (0,), batch_size=8, seed=1), 4)
    assert epochs != epochs_batches(ScheduleBatchSampler([50], (0,), batch_size=8, seed=2), 4)
    # any epoch, in any order, again: a resumed run skips into the same batches
    assert batches_of(sampler, 2) == epochs[2] and batches_of(sampler, 0) == epochs[0]


def test_content_warmup_epochs_go_through_the_content_draws_one_after_the_other():
    sizes = [9, 10]  # a round: 3 collaborative and 3 content steps of 4; a content draw: 3 steps
    sampler = ScheduleBatchSampler(sizes, (0, 1), batch_size=4, warmup_epochs=3, warmup_source=1)
    epochs = epochs_batches(sampler, 5)
    assert {len(batches) for batches in epochs} == {len(sampler)} == {6}
    warmup = [batch for batches in epochs[:3] for batch in batches]
    assert {source_of(batch) for batch in warmup} == {1}
    # 18 warm-up steps: six whole passes over the content documents, each a new draw, in order
    draws = draws_of(warmup)
    assert list(draws) == [(1, draw) for draw in range(6)]
    assert all(sorted(indices) == list(range(10)) for indices in draws.values())
    # the rounds after the warm-up: the collaborative draws from 0, the content ones after the warm-up's
    for round_index, batches in enumerate(epochs[3:]):
        assert sorted(draws_of(batches)) == [(0, round_index), (1, 6 + round_index)]


def test_a_warmup_epoch_may_end_inside_a_content_draw():
    sampler = ScheduleBatchSampler([4, 10], (0, 1), batch_size=4, warmup_epochs=2, warmup_source=1)
    # a round: 1 + 3 steps; the warm-up: 8 content steps, two whole draws and two steps of a third
    warmup = [batch for batches in epochs_batches(sampler, 2) for batch in batches]
    draws = draws_of(warmup)
    assert list(draws) == [(1, 0), (1, 1), (1, 2)] and len(draws[1, 2]) == 8
    full_draw = batches_of(ScheduleBatchSampler([4, 10], (1,), batch_size=4), 2)
    assert warmup[-2:] == full_draw[:2]  # the warm-up's partial draw is the start of that draw
    assert sorted(draws_of(batches_of(sampler, 2))) == [(0, 0), (1, 3)]


@pytest.mark.parametrize("size", [16, 18, 19, 23, 30, 3])
def test_steps_depend_on_the_global_batch_only(size):
    """One process with batch 8, two with batch 4, or accumulation over two batches of 4: the same steps."""
    sizes = [size, 11]
    for epoch in range(2):
        whole = batches_of(ScheduleBatchSampler(sizes, (0, 1), batch_size=8, seed=5), epoch)
        split_sampler = ScheduleBatchSampler(sizes, (0, 1), batch_size=4, seed=5, micro_batches_per_step=2)
        split = batches_of(split_sampler, epoch)
        assert len(split) == 2 * len(whole) == len(split_sampler)
        for step, batch in enumerate(whole):
            first, second = split[2 * step], split[2 * step + 1]
            assert first and second and source_of(first) == source_of(second) == source_of(batch)
            assert first + second == batch
            assert len(first) <= 4 + 1 and len(second) <= 4 + 1
        for (source, _), indices in draws_of(split).items():
            assert sorted(indices) == list(range(sizes[source]))


def test_a_remainder_too_small_for_every_batch_of_a_step_joins_the_last_full_step():
    # (the one case where a step differs from the global batch's: one process with batch 8 has a step of 1 document)
    sampler = ScheduleBatchSampler([17], (0,), batch_size=4, micro_batches_per_step=2)
    assert [len(batch) for batch in sampler] == [4, 4, 4, 5]
    sampler = ScheduleBatchSampler([18], (0,), batch_size=4, micro_batches_per_step=2)
    assert [len(batch) for batch in sampler] == [4, 4, 4, 4, 1, 1]
    sampler = ScheduleBatchSampler([5], (0,), batch_size=4, micro_batches_per_step=4)
    assert [len(batch) for batch in sampler] == [1, 1, 1, 2]


def test_steps_of_several_processes_are_whole_and_homogeneous():
    """Four batches a step (two accumulation steps on two processes), all from one source, in either alternation."""
    for alternation in ("epoch", "batch"):
        sampler = ScheduleBatchSampler(
            [21, 9], (0, 1), batch_size=2, alternation=alternation, micro_batches_per_step=4, warmup_epochs=1,
            warmup_source=1,
        )  # fmt: skip
        for epoch in range(3):
            batches = batches_of(sampler, epoch)
            assert len(batches) % 4 == 0
            for start in range(0, len(batches), 4):
                assert len({source_of(batch) for batch in batches[start : start + 4]}) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(source_sizes=[4], round_sources=(0,), batch_size=0), "batch_size"),
        (dict(source_sizes=[4], round_sources=(0,), batch_size=2, alternation="step"), "alternation"),
        (dict(source_sizes=[4], round_sources=(), batch_size=2), "at least one source"),
        (dict(source_sizes=[4], round_sources=(1,), batch_size=2), "source 1"),
        (dict(source_sizes=[4, 0], round_sources=(0, 1), batch_size=2), "source 1"),
        (dict(source_sizes=[4], round_sources=(0,), batch_size=2, micro_batches_per_step=0), "micro_batches_per_step"),
        (dict(source_sizes=[3], round_sources=(0,), batch_size=2, micro_batches_per_step=4), "fewer than the 4"),
        (dict(source_sizes=[4], round_sources=(0,), batch_size=2, warmup_epochs=1), "warm-up source"),
        (dict(source_sizes=[4], round_sources=(0,), batch_size=2, warmup_epochs=1, warmup_source=1), "source 1"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleBatchSampler(**kwargs)


def test_no_batch_size_attribute_for_data_parallel_wrappers():
    """accelerate's shard wrapper reads `batch_size` and would stop at the first short batch of a source's epoch."""
    from accelerate.data_loader import BatchSamplerShard

    sampler = ScheduleBatchSampler([10, 7], (0, 1), batch_size=2, micro_batches_per_step=2)
    sampler.set_epoch(1)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in range(2)]
    assert [len(shard) for shard in shards] == [len(sampler) // 2] * 2
    interleaved = [batch for pair in zip(*shards, strict=True) for batch in pair]
    assert interleaved == batches_of(sampler, 1)
    assert Counter(key for batch in interleaved for key in batch) == Counter(key for batch in sampler for key in batch)


@pytest.mark.parametrize("processes", [1, 2])
def test_the_epoch_reaches_the_schedule_through_accelerates_wrappers_when_resuming(processes):
    """Resuming mid-epoch, accelerate skips batches behind wrappers that hide the schedule: the dataset tells it."""
    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard, SkipBatchSampler

    sampler = ScheduleBatchSampler([10, 7], (0, 1), batch_size=2, micro_batches_per_step=processes)
    dataset = ScheduledDocuments([], schedule=sampler)
    inner = BatchSamplerShard(sampler, num_processes=2, process_index=0) if processes == 2 else sampler
    loader = DataLoaderShard(dataset, batch_sampler=SkipBatchSampler(inner, skip_batches=1), collate_fn=list)
    loader.set_epoch(3)
    assert sampler.epoch == 3


def test_grouping_by_length_pads_less_and_keeps_steps_fixed_by_the_global_batch():
    rng = np.random.default_rng(0)
    sizes = [2000]
    lengths = [rng.integers(1, 300, size=2000)]
    plain = batches_of(ScheduleBatchSampler(sizes, (0,), batch_size=16, seed=1))
    grouped = batches_of(ScheduleBatchSampler(sizes, (0,), batch_size=16, seed=1, lengths=lengths))
    split = batches_of(
        ScheduleBatchSampler(sizes, (0,), batch_size=8, seed=1, lengths=lengths, micro_batches_per_step=2)
    )

    def padded_tokens(batches):
        return sum(len(batch) * max(lengths[0][index] for _, _, index in batch) for batch in batches)

    assert sorted(draws_of(grouped)[0, 0]) == list(range(2000))
    assert padded_tokens(grouped) < 0.6 * padded_tokens(plain)
    assert [first + second for first, second in zip(split[::2], split[1::2], strict=True)] == grouped
    # the step order is shuffled, not sorted: long and short steps alternate through the epoch
    step_maxima = [max(lengths[0][index] for _, _, index in batch) for batch in grouped]
    assert step_maxima != sorted(step_maxima) and step_maxima != sorted(step_maxima, reverse=True)


def test_lengths_must_cover_every_document():
    with pytest.raises(ValueError, match="one length per document"):
        ScheduleBatchSampler([5, 3], (0, 1), batch_size=2, lengths=[[1] * 5, [1] * 2])
