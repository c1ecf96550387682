"""An exponential moving average of the trainable weights, which evaluation, checkpoints and the final model use."""

import os
from contextlib import contextmanager

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel
from transformers import TrainerCallback

# The raw (not averaged) trainable weights in a checkpoint, from which a resumed run continues.
TRAINING_WEIGHTS_NAME = "training_weights.safetensors"


def ema_with_warmup(decay: float):
    """
    The `multi_avg_fn` of an [`AveragedModel`]: `average += (1 - d) * (weights - average)` with
    `d = min(decay, (1 + n) / (10 + n))` after `n` averaged steps, so that the first weights do not stay in the
    average for long; the weights are cast to the average's dtype.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        steps = num_averaged.double()
        weight = (1 - torch.clamp((1 + steps) / (10 + steps), max=decay)).to(averaged[0].dtype)
        torch._foreach_lerp_(
            averaged, [tensor.to(average.dtype) for tensor, average in zip(current, averaged, strict=True)], weight
        )

    return update


class WeightAverage(TrainerCallback):
    """
    Keeps an [`AveragedModel`] of the trainable parameters, updated after every optimizer step by
    [`ema_with_warmup`], in float32 whatever the weights' dtype. It starts at the weights training starts from.
    [`CLLM4RecTrainer`] evaluates and saves with the average swapped in and ends training with the average (or the
    best checkpoint's average) as the model's weights. A checkpoint holds the average as its model weights and the raw
    weights beside them ([`save_training_weights`]), from which a resumed run continues ([`resume`]).
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.names: list[str] = []
        self.weights = nn.ParameterList()
        self.average: AveragedModel | None = None
        # the checkpoint a resumed run continues from, set by the trainer before training begins
        self.resume_from: str | os.PathLike | None = None

    @staticmethod
    def trainable(model) -> dict[str, nn.Parameter]:
        return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}

    def start_from(self, model) -> None:
        """Starts the average at the model's current weights."""
        parameters = self.trainable(model)
        self.names = list(parameters)
        self.weights = nn.ParameterList(parameters.values())
        start = nn.ParameterList(nn.Parameter(parameter.detach().float(), False) for parameter in parameters.values())
        self.average = AveragedModel(start, multi_avg_fn=ema_with_warmup(self.decay))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # the model holds the weights training starts from: a resumed run's, those of its checkpoint (the average)
        if self.resume_from is not None:
            self.resume(model, self.resume_from)
        else:
            self.start_from(model)
        # the average holds the weights of `global_step` steps and those training started from
        self.average.n_averaged.fill_(state.global_step + 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.average.update_parameters(self.weights)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # a best checkpoint loaded at the end already holds its average; otherwise the model takes the last one
        if not (args.load_best_model_at_end and state.best_model_checkpoint is not None):
            self.copy_into(model, self.averaged_weights())
        self.average = self.resume_from = None

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.average.module, strict=True))

    @classmethod
    @torch.no_grad()
    def copy_into(cls, model, weights: dict[str, torch.Tensor]) -> None:
        """Copies `weights` (by name) into the model's trainable parameters."""
        for name, parameter in cls.trainable(model).items():
            parameter.copy_(weights[name])

    @contextmanager
    def applied(self, model):
        """Within the block the model holds the averaged weights (outside training: unchanged)."""
        if self.average is None:
            yield
            return
        raw = {name: parameter.detach().clone() for name, parameter in self.trainable(model).items()}
        self.copy_into(model, self.averaged_weights())
        try:
            yield
        finally:
            self.copy_into(model, raw)

    def save_training_weights(self, model, folder: str | os.PathLike) -> None:
        """Writes the raw trainable weights (and the decay) beside a checkpoint whose model weights are the average."""
        weights = {name: parameter.detach().contiguous().cpu() for name, parameter in self.trainable(model).items()}
        os.makedirs(folder, exist_ok=True)
        metadata = {"format": "pt", "weight_average_decay": repr(self.decay)}
        save_file(weights, os.path.join(folder, TRAINING_WEIGHTS_NAME), metadata=metadata)

    def resume(self, model, folder: str | os.PathLike) -> None:
        """
        After the model has loaded a checkpoint's (averaged) weights: the average continues from them and the model
        gets the checkpoint's raw weights back. A checkpoint saved without averaging starts the average there.
        """
        self.start_from(model)
        path = os.path.join(folder, TRAINING_WEIGHTS_NAME)
        if not os.path.isfile(path):
            return
        with safe_open(path, "pt") as stored:
            saved_decay = float(stored.metadata()["weight_average_decay"])
            weights = {name: stored.get_tensor(name) for name in stored.keys()}
        if saved_decay != self.decay:
            raise ValueError(
                f"{folder} was saved by a run that averaged its weights with weight_average_decay={saved_decay}: "
                f"resume it with that decay, not {self.decay}."
            )
        parameters = self.trainable(model)
        if weights.keys() != parameters.keys():
            raise ValueError(
                f"{path} holds other trainable weights than the model's: the checkpoint comes from another setup "
                f"(missing {sorted(parameters.keys() - weights.keys())[:3]}, unexpected "
                f"{sorted(weights.keys() - parameters.keys())[:3]})."
            )
        self.copy_into(model, weights)


__all__ = ["WeightAverage", "TRAINING_WEIGHTS_NAME", "ema_with_warmup"]
