"""The order in which CLLM4Rec's document sources are traversed: epochs of one source, alternating between sources."""

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

ALTERNATIONS = ("epoch", "batch")


class ScheduleBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """
    Yields batches of `(source, draw, index)` keys of a [`ScheduledDocuments`], each batch from one source.

    `rounds` lists, for every round, the sources traversed in it (one epoch of each): `[(1,)] * 10 + [(0, 1)] * 100`
    is the paper's pretraining, ten content epochs, then a hundred rounds of one collaborative and one content epoch.
    With `alternation="epoch"` a round runs its sources one after the other; with `"batch"` their batches are
    interleaved evenly. Every epoch of a source is a new permutation and a new `draw`, drawn from `seed`, so the
    whole schedule is reproducible and can be resumed anywhere.
    """

    def __init__(
        self,
        source_sizes: Sequence[int],
        rounds: Sequence[Sequence[int]],
        batch_size: int,
        alternation: str = "epoch",
        seed: int = 0,
    ):
        if alternation not in ALTERNATIONS:
            raise ValueError(f"alternation must be one of {ALTERNATIONS}, got {alternation!r}.")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if not rounds:
            raise ValueError("The schedule needs at least one round.")
        for sources in rounds:
            for source in sources:
                if not 0 <= source < len(source_sizes) or source_sizes[source] == 0:
                    raise ValueError(f"The schedule uses source {source}, which has no documents.")
        self.source_sizes = list(source_sizes)
        self.rounds = [tuple(sources) for sources in rounds]
        self.batch_size = batch_size
        self.alternation = alternation
        self.seed = seed

    def round_lengths(self) -> list[int]:
        """Number of batches in each round."""
        return [sum(math.ceil(self.source_sizes[source] / self.batch_size) for source in sources) for sources in self.rounds]

    def __len__(self) -> int:
        return sum(self.round_lengths())

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        draws = [0] * len(self.source_sizes)
        for sources in self.rounds:
            source_batches = []
            for source in sources:
                permutation = np.random.default_rng((self.seed, source, draws[source])).permutation(
                    self.source_sizes[source]
                )
                keys = [(source, draws[source], int(index)) for index in permutation]
                source_batches.append([keys[start : start + self.batch_size] for start in range(0, len(keys), self.batch_size)])
                draws[source] += 1
            yield from self._order(source_batches)

    def _order(self, source_batches: list[list[list]]) -> list[list]:
        if self.alternation == "epoch":
            return [batch for batches in source_batches for batch in batches]
        # interleave evenly: batch j of a source with n batches sits at relative position (j + 0.5) / n
        positioned = [
            ((position + 0.5) / len(batches), order, batch)
            for order, batches in enumerate(source_batches)
            for position, batch in enumerate(batches)
        ]
        return [batch for _, _, batch in sorted(positioned, key=lambda entry: entry[:2])]


__all__ = ["ScheduleBatchSampler", "ALTERNATIONS"]
