"""The order in which CLLM4Rec's document sources are traversed: rounds of one epoch of each source, one per epoch."""

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

ALTERNATIONS = ("epoch", "batch")
# Steps whose documents are sorted by length together when grouping by length.
LENGTH_GROUP_STEPS = 50


class ScheduleBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """
    Yields the batches of one epoch of training, as `(source, draw, index)` keys of a [`ScheduledDocuments`], each
    batch from one source; `set_epoch` (which the Trainer calls before every epoch) says which epoch.

    An epoch is a round: one pass (a `draw`) over each source of `round_sources`. `(0, 1)` is the paper's round of
    pretraining, one collaborative and one content epoch. With `alternation="epoch"` a round runs its sources one
    after the other; with `"batch"` their optimizer steps are interleaved evenly. The first `warmup_epochs` epochs
    instead go through `warmup_source` alone, draw after draw, for as many steps as a round takes (every epoch of a
    Trainer has the same length); the rounds after them start at the next draw. Every draw of a source is a new
    permutation drawn from `seed`, so the schedule is reproducible and can be resumed anywhere.

    An optimizer step takes `micro_batches_per_step` consecutive batches (gradient accumulation steps x processes;
    a data-parallel wrapper hands batch `i` to process `i % processes`). Each draw of a source is cut into steps of
    `batch_size * micro_batches_per_step` documents, and each step into `micro_batches_per_step` batches of
    `batch_size` (a draw's last step into batches as even as possible), so that every step holds documents of one
    source, and the documents of a step depend on the global batch size alone: one process with batch 2B and two
    with batch B, or accumulation over two batches of B, train on the same steps. A remainder too small to give every
    batch of a step a document joins the draw's last full step instead.

    With `lengths` (one approximate length per document of each source), documents are grouped by length: every
    window of `LENGTH_GROUP_STEPS` steps is sorted by length before it is cut into steps, and the steps are then
    shuffled, so a batch pads little and the steps still depend on the global batch size alone.
    """

    def __init__(
        self,
        source_sizes: Sequence[int],
        round_sources: Sequence[int],
        batch_size: int,
        alternation: str = "epoch",
        seed: int = 0,
        micro_batches_per_step: int = 1,
        lengths: Sequence[Sequence[int]] | None = None,
        warmup_epochs: int = 0,
        warmup_source: int | None = None,
    ):
        if alternation not in ALTERNATIONS:
            raise ValueError(f"alternation must be one of {ALTERNATIONS}, got {alternation!r}.")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if micro_batches_per_step <= 0:
            raise ValueError(f"micro_batches_per_step must be positive, got {micro_batches_per_step}.")
        if not round_sources:
            raise ValueError("A round needs at least one source.")
        if warmup_epochs < 0 or (warmup_epochs and warmup_source is None):
            raise ValueError("Warm-up epochs need a warm-up source and cannot be negative.")
        for source in {*round_sources, *([warmup_source] if warmup_epochs else [])}:
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
        self.round_sources = tuple(round_sources)
        # not `batch_size`: a data-parallel wrapper would take a short batch for the end of the sampler
        self.per_device_batch_size = batch_size
        self.micro_batches_per_step = micro_batches_per_step
        self.alternation = alternation
        self.seed = seed
        self.warmup_epochs = warmup_epochs
        self.warmup_source = warmup_source
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch that the next iteration yields."""
        self.epoch = epoch

    def steps_per_draw(self, source: int) -> int:
        """Number of optimizer steps in one pass over a source."""
        size, step_size = self.source_sizes[source], self.per_device_batch_size * self.micro_batches_per_step
        return size // step_size + int(size % step_size >= self.micro_batches_per_step)

    @property
    def steps_per_epoch(self) -> int:
        """Number of optimizer steps in every epoch: one round's."""
        return sum(self.steps_per_draw(source) for source in self.round_sources)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.micro_batches_per_step

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in self.epoch_steps(self.epoch):
            yield from step

    def epoch_steps(self, epoch: int) -> list[list[list[tuple[int, int, int]]]]:
        """The optimizer steps of an epoch, each a list of `micro_batches_per_step` batches."""
        if epoch < self.warmup_epochs:
            return self._warmup_steps(epoch)
        round_index = epoch - self.warmup_epochs
        draws = {source: round_index for source in self.round_sources}
        if self.warmup_epochs:
            draws[self.warmup_source] += self._warmup_draws()
        return self._order([self._draw_steps(source, draws[source]) for source in self.round_sources])

    def _warmup_draws(self) -> int:
        """Draws of the warm-up source that the warm-up epochs begin."""
        return -(-self.warmup_epochs * self.steps_per_epoch // self.steps_per_draw(self.warmup_source))

    def _warmup_steps(self, epoch: int) -> list:
        """Steps `[epoch * n, (epoch + 1) * n)` of the warm-up source's draws one after the other (n: a round's)."""
        per_draw, per_epoch = self.steps_per_draw(self.warmup_source), self.steps_per_epoch
        start, end = epoch * per_epoch, (epoch + 1) * per_epoch
        steps = []
        for draw in range(start // per_draw, -(-end // per_draw)):
            steps += self._draw_steps(self.warmup_source, draw)
        offset = start // per_draw * per_draw
        return steps[start - offset : end - offset]

    def _draw_steps(self, source: int, draw: int) -> list[list[list[tuple[int, int, int]]]]:
        """One pass over a source: its optimizer steps, each a list of `micro_batches_per_step` batches."""
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
        num_steps = self.steps_per_draw(source)
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
