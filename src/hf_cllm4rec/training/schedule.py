"""The order in which CLLM4Rec's document sources are traversed: epochs of one source, alternating between sources."""

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

ALTERNATIONS = ("epoch", "batch")
# Steps whose documents are sorted by length together when grouping by length.
LENGTH_GROUP_STEPS = 50


class ScheduleBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """
    Yields batches of `(source, draw, index)` keys of a [`ScheduledDocuments`], each batch from one source.

    `rounds` lists, for every round, the sources traversed in it (one epoch of each): `[(1,)] * 10 + [(0, 1)] * 100`
    is the paper's pretraining, ten content epochs, then a hundred rounds of one collaborative and one content epoch.
    With `alternation="epoch"` a round runs its sources one after the other; with `"batch"` their optimizer steps are
    interleaved evenly. Every epoch of a source is a new permutation and a new `draw`, drawn from `seed`, so the
    whole schedule is reproducible and can be resumed anywhere.

    An optimizer step takes `micro_batches_per_step` consecutive batches (gradient accumulation steps x processes;
    a data-parallel wrapper hands batch `i` to process `i % processes`). Each epoch of a source is cut into steps of
    `batch_size * micro_batches_per_step` documents, and each step into `micro_batches_per_step` batches of
    `batch_size` (an epoch's last step into batches as even as possible), so that every step holds documents of one
    source, and the documents of a step depend on the global batch size alone: one process with batch 2B and two
    with batch B, or accumulation over two batches of B, train on the same steps. A remainder too small to give every
    batch of a step a document joins the epoch's last full step instead.

    With `lengths` (one approximate length per document of each source), documents are grouped by length: every
    window of `LENGTH_GROUP_STEPS` steps is sorted by length before it is cut into steps, and the steps are then
    shuffled, so a batch pads little and the steps still depend on the global batch size alone.
    """

    def __init__(
        self,
        source_sizes: Sequence[int],
        rounds: Sequence[Sequence[int]],
        batch_size: int,
        alternation: str = "epoch",
        seed: int = 0,
        micro_batches_per_step: int = 1,
        lengths: Sequence[Sequence[int]] | None = None,
    ):
        if alternation not in ALTERNATIONS:
            raise ValueError(f"alternation must be one of {ALTERNATIONS}, got {alternation!r}.")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if micro_batches_per_step <= 0:
            raise ValueError(f"micro_batches_per_step must be positive, got {micro_batches_per_step}.")
        if not rounds:
            raise ValueError("The schedule needs at least one round.")
        for sources in rounds:
            for source in sources:
                if not 0 <= source < len(source_sizes) or source_sizes[source] == 0:
                    raise ValueError(f"The schedule uses source {source}, which has no documents.")
                if source_sizes[source] < micro_batches_per_step:
                    raise ValueError(
                        f"Source {source} has {source_sizes[source]} documents, fewer than the {micro_batches_per_step} "
                        "batches of one optimizer step (gradient accumulation steps x processes)."
                    )
        if lengths is not None and [len(source) for source in lengths] != list(source_sizes):
            raise ValueError("`lengths` must hold one length per document of every source.")
        self.source_sizes = list(source_sizes)
        self.lengths = None if lengths is None else [np.asarray(source) for source in lengths]
        self.rounds = [tuple(sources) for sources in rounds]
        # not `batch_size`: a data-parallel wrapper would take a short batch for the end of the sampler
        self.per_device_batch_size = batch_size
        self.micro_batches_per_step = micro_batches_per_step
        self.alternation = alternation
        self.seed = seed

    def steps_per_epoch(self, source: int) -> int:
        """Number of optimizer steps in one epoch of a source."""
        size, step_size = self.source_sizes[source], self.per_device_batch_size * self.micro_batches_per_step
        return size // step_size + int(size % step_size >= self.micro_batches_per_step)

    def round_lengths(self) -> list[int]:
        """Number of batches in each round (`micro_batches_per_step` per optimizer step)."""
        return [
            sum(self.steps_per_epoch(source) for source in sources) * self.micro_batches_per_step
            for sources in self.rounds
        ]

    def __len__(self) -> int:
        return sum(self.round_lengths())

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        draws = [0] * len(self.source_sizes)
        for sources in self.rounds:
            source_steps = []
            for source in sources:
                source_steps.append(self._epoch_steps(source, draws[source]))
                draws[source] += 1
            for step in self._order(source_steps):
                yield from step

    def _epoch_steps(self, source: int, draw: int) -> list[list[list[tuple[int, int, int]]]]:
        """One epoch of a source: its optimizer steps, each a list of `micro_batches_per_step` batches."""
        rng = np.random.default_rng((self.seed, source, draw))
        permutation = rng.permutation(self.source_sizes[source])
        step_size, parts = self.per_device_batch_size * self.micro_batches_per_step, self.micro_batches_per_step
        if self.lengths is not None:
            window = step_size * LENGTH_GROUP_STEPS
            permutation = np.concatenate(
                [
                    chunk[np.argsort(-self.lengths[source][chunk], kind="stable")]
                    for chunk in np.split(permutation, range(window, len(permutation), window))
                ]
            )
        keys = [(source, draw, int(index)) for index in permutation]
        num_steps = self.steps_per_epoch(source)
        bounds = [step * step_size for step in range(num_steps)] + [len(keys)]
        steps = []
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            cuts = [start + part * (end - start) // parts for part in range(parts + 1)]
            steps.append([keys[low:high] for low, high in zip(cuts[:-1], cuts[1:], strict=True)])
        if self.lengths is not None:
            steps = [steps[index] for index in rng.permutation(len(steps))]
        return steps

    def _order(self, source_steps: list[list]) -> list:
        if self.alternation == "epoch":
            return [step for steps in source_steps for step in steps]
        # interleave evenly: step j of a source with n steps sits at relative position (j + 0.5) / n
        positioned = [
            ((position + 0.5) / len(steps), order, step)
            for order, steps in enumerate(source_steps)
            for position, step in enumerate(steps)
        ]
        return [step for _, _, step in sorted(positioned, key=lambda entry: entry[:2])]


__all__ = ["ScheduleBatchSampler", "ALTERNATIONS"]
