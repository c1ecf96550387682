"""An exponential moving average of the trainable weights, which evaluation, checkpoints and the final model use."""

import os
from contextlib import contextmanager

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

# The raw (not averaged) trainable weights in a checkpoint, from which a resumed run continues.
TRAINING_WEIGHTS_NAME = "training_weights.safetensors"


class WeightAverage(TrainerCallback):
    """
    Keeps `average = d * average + (1 - d) * weights` of the trainable parameters after every optimizer step, with
    `d = min(decay, (1 + step) / (10 + step))` so that the first steps do not leave the initial weights in the
    average for long. The average is kept in float32, whatever the weights' dtype. [`CLLM4RecTrainer`] evaluates
    and saves with the average swapped in and ends training with the average (or the best checkpoint's average) as
    the model's weights.
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.average: dict[str, torch.Tensor] | None = None

    @staticmethod
    def trainable(model) -> dict[str, torch.nn.Parameter]:
        return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}

    def start_from(self, model) -> None:
        """Starts the average at the model's current weights."""
        self.average = {name: parameter.detach().float().clone() for name, parameter in self.trainable(model).items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.average is None:  # a resumed run has restored its average from the checkpoint
            self.start_from(model)

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        decay = min(self.decay, (1 + state.global_step) / (10 + state.global_step))
        parameters = self.trainable(model)
        names = list(self.average)
        weights = [parameters[name].float() for name in names]  # the parameter itself when it is float32
        torch._foreach_lerp_([self.average[name] for name in names], weights, 1 - decay)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # a best checkpoint loaded at the end already holds its average; otherwise the model takes the last one
        if not (args.load_best_model_at_end and state.best_model_checkpoint is not None):
            self.copy_into(model, self.average)
        self.average = None

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
        self.copy_into(model, self.average)
        try:
            yield
        finally:
            self.copy_into(model, raw)

    def save_training_weights(self, model, folder: str | os.PathLike) -> None:
        """Writes the raw trainable weights beside a checkpoint whose model weights are the average."""
        weights = {name: parameter.detach().contiguous().cpu() for name, parameter in self.trainable(model).items()}
        save_file(weights, os.path.join(folder, TRAINING_WEIGHTS_NAME), metadata={"format": "pt"})

    def resume(self, model, folder: str | os.PathLike) -> None:
        """
        After the model has loaded a checkpoint's (averaged) weights: the average continues from them and the model
        gets the checkpoint's raw weights back. A checkpoint saved without averaging starts the average there.
        """
        self.start_from(model)
        path = os.path.join(folder, TRAINING_WEIGHTS_NAME)
        if not os.path.isfile(path):
            return
        weights = load_file(path)
        parameters = self.trainable(model)
        if weights.keys() != parameters.keys():
            raise ValueError(
                f"{path} holds other trainable weights than the model's: the checkpoint comes from another setup "
                f"(missing {sorted(parameters.keys() - weights.keys())[:3]}, unexpected "
                f"{sorted(weights.keys() - parameters.keys())[:3]})."
            )
        self.copy_into(model, weights)


__all__ = ["WeightAverage", "TRAINING_WEIGHTS_NAME"]
