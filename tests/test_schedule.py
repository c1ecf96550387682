from collections import Counter

import numpy as np
import pytest

from hf_cllm4rec.training import ScheduleBatchSampler


def batches_of(sampler):
    return [list(batch) for batch in sampler]


def source_of(batch) -> int:
    sources = {source for source, _, _ in batch}
    assert len(sources) == 1, f"a batch mixes sources {sorted(sources)}"
    return sources.pop()


def epochs_of(batches) -> dict[tuple[int, int], list[int]]:
    """The indices drawn in every epoch, keyed by `(source, draw)`, in the order they come."""
    epochs = {}
    for batch in batches:
        for source, draw, index in batch:
            epochs.setdefault((source, draw), []).append(index)
    return epochs


def test_batches_are_homogeneous_and_every_document_comes_once_per_epoch():
    sizes = [23, 10]
    sampler = ScheduleBatchSampler(sizes, [(1,), (0, 1), (0, 1)], batch_size=4)
    batches = batches_of(sampler)
    for batch in batches:
        source_of(batch)
        assert 1 <= len(batch) <= 4
    epochs = epochs_of(batches)
    assert sorted(epochs) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    for (source, _), indices in epochs.items():
        assert sorted(indices) == list(range(sizes[source]))
    assert len(sampler) == len(batches) == sum(sampler.round_lengths())


def test_epoch_alternation_runs_the_sources_of_a_round_in_order():
    sampler = ScheduleBatchSampler([10, 6], [(1,), (0, 1), (1, 0)], batch_size=4)
    sources = [source_of(batch) for batch in sampler]
    # content warm-up (2 batches), then 3 collaborative + 2 content, then 2 content + 3 collaborative
    assert sources == [1, 1] + [0, 0, 0, 1, 1] + [1, 1, 0, 0, 0]
    assert sampler.round_lengths() == [2, 5, 5]
    draws = [batch[0][1] for batch in sampler]
    assert draws == [0, 0] + [0, 0, 0, 1, 1] + [2, 2, 1, 1, 1]


def test_batch_alternation_interleaves_evenly():
    sampler = ScheduleBatchSampler([12, 4], [(0, 1)], batch_size=2, alternation="batch")
    sources = [source_of(batch) for batch in sampler]
    # six collaborative batches and two content batches: one content batch in each half of the round
    assert sources == [0, 0, 1, 0, 0, 0, 1, 0]
    sampler = ScheduleBatchSampler([8, 8], [(0, 1), (0, 1)], batch_size=2, alternation="batch")
    assert [source_of(batch) for batch in sampler] == [0, 1] * 8
    assert sampler.round_lengths() == [8, 8]


def test_every_draw_is_a_new_permutation_and_the_same_seed_repeats_it():
    rounds = [(0,)] * 4
    batches = batches_of(ScheduleBatchSampler([50], rounds, batch_size=8, seed=1))
    epochs = epochs_of(batches)
    orders = [tuple(epochs[0, draw]) for draw in range(4)]
    assert len(set(orders)) == 4
    assert all(order != tuple(range(50)) for order in orders)
    assert batches == batches_of(ScheduleBatchSampler([50], rounds, batch_size=8, seed=1))
    assert batches != batches_of(ScheduleBatchSampler([50], rounds, batch_size=8, seed=2))
    # iterating again gives the same schedule (a resumed run skips into the same batches)
    sampler = ScheduleBatchSampler([50], rounds, batch_size=8, seed=1)
    assert batches_of(sampler) == batches_of(sampler)


@pytest.mark.parametrize("size", [16, 18, 19, 23, 30, 3])
def test_steps_depend_on_the_global_batch_only(size):
    """One process with batch 8, two with batch 4, or accumulation over two batches of 4: the same steps."""
    rounds = [(0, 1), (1, 0)]
    sizes = [size, 11]
    whole = ScheduleBatchSampler(sizes, rounds, batch_size=8, seed=5)
    split = ScheduleBatchSampler(sizes, rounds, batch_size=4, seed=5, micro_batches_per_step=2)
    whole_batches, split_batches = batches_of(whole), batches_of(split)
    assert len(split_batches) == 2 * len(whole_batches) == len(split)
    for step, batch in enumerate(whole_batches):
        first, second = split_batches[2 * step], split_batches[2 * step + 1]
        assert first and second and source_of(first) == source_of(second) == source_of(batch)
        assert first + second == batch
        assert len(first) <= 4 + 1 and len(second) <= 4 + 1
    assert split.round_lengths() == [2 * length for length in whole.round_lengths()]
    for (source, _), indices in epochs_of(split_batches).items():
        assert sorted(indices) == list(range(sizes[source]))


def test_a_remainder_too_small_for_every_batch_of_a_step_joins_the_last_full_step():
    # (the one case where a step differs from the global batch's: one process with batch 8 has a step of 1 document)
    sampler = ScheduleBatchSampler([17], [(0,)], batch_size=4, micro_batches_per_step=2)
    assert [len(batch) for batch in sampler] == [4, 4, 4, 5]
    sampler = ScheduleBatchSampler([18], [(0,)], batch_size=4, micro_batches_per_step=2)
    assert [len(batch) for batch in sampler] == [4, 4, 4, 4, 1, 1]
    sampler = ScheduleBatchSampler([5], [(0,)], batch_size=4, micro_batches_per_step=4)
    assert [len(batch) for batch in sampler] == [1, 1, 1, 2]


def test_steps_of_several_processes_are_whole_and_homogeneous():
    """Four batches a step (two accumulation steps on two processes), all from one source, in either alternation."""
    for alternation in ("epoch", "batch"):
        sampler = ScheduleBatchSampler(
            [21, 9], [(0, 1)] * 2, batch_size=2, alternation=alternation, micro_batches_per_step=4
        )
        batches = batches_of(sampler)
        assert len(batches) % 4 == 0
        for start in range(0, len(batches), 4):
            assert len({source_of(batch) for batch in batches[start : start + 4]}) == 1
        for (source, _), indices in epochs_of(batches).items():
            assert sorted(indices) == list(range([21, 9][source]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(source_sizes=[4], rounds=[(0,)], batch_size=0), "batch_size"),
        (dict(source_sizes=[4], rounds=[(0,)], batch_size=2, alternation="step"), "alternation"),
        (dict(source_sizes=[4], rounds=[], batch_size=2), "at least one round"),
        (dict(source_sizes=[4], rounds=[(1,)], batch_size=2), "source 1"),
        (dict(source_sizes=[4, 0], rounds=[(0, 1)], batch_size=2), "source 1"),
        (dict(source_sizes=[4], rounds=[(0,)], batch_size=2, micro_batches_per_step=0), "micro_batches_per_step"),
        (dict(source_sizes=[3], rounds=[(0,)], batch_size=2, micro_batches_per_step=4), "fewer than the 4"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleBatchSampler(**kwargs)


def test_no_batch_size_attribute_for_data_parallel_wrappers():
    """accelerate's shard wrapper reads `batch_size` and would stop at the first short batch of a source's epoch."""
    from accelerate.data_loader import BatchSamplerShard

    sampler = ScheduleBatchSampler([10, 7], [(0, 1)], batch_size=2, micro_batches_per_step=2)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in range(2)]
    assert [len(shard) for shard in shards] == [len(sampler) // 2] * 2
    interleaved = [batch for pair in zip(*shards, strict=True) for batch in pair]
    assert interleaved == batches_of(sampler)
    assert Counter(key for batch in interleaved for key in batch) == Counter(key for batch in sampler for key in batch)


def test_grouping_by_length_pads_less_and_keeps_steps_fixed_by_the_global_batch():
    rng = np.random.default_rng(0)
    sizes = [2000]
    lengths = [rng.integers(1, 300, size=2000)]
    plain = batches_of(ScheduleBatchSampler(sizes, [(0,)], batch_size=16, seed=1))
    grouped = batches_of(ScheduleBatchSampler(sizes, [(0,)], batch_size=16, seed=1, lengths=lengths))
    split = batches_of(
        ScheduleBatchSampler(sizes, [(0,)], batch_size=8, seed=1, lengths=lengths, micro_batches_per_step=2)
    )

    def padded_tokens(batches):
        return sum(len(batch) * max(lengths[0][index] for _, _, index in batch) for batch in batches)

    assert sorted(epochs_of(grouped)[0, 0]) == list(range(2000))
    assert padded_tokens(grouped) < 0.6 * padded_tokens(plain)
    assert [first + second for first, second in zip(split[::2], split[1::2], strict=True)] == grouped
    # the step order is shuffled, not sorted: long and short steps alternate through the epoch
    step_maxima = [max(lengths[0][index] for _, _, index in batch) for batch in grouped]
    assert step_maxima != sorted(step_maxima) and step_maxima != sorted(step_maxima, reverse=True)


def test_lengths_must_cover_every_document():
    with pytest.raises(ValueError, match="one length per document"):
        ScheduleBatchSampler([5, 3], [(0, 1)], batch_size=2, lengths=[[1] * 5, [1] * 2])
