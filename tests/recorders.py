"""Trainer callbacks that record what a training run did, for tests to compare runs exactly."""

from __future__ import annotations

from transformers import TrainerCallback


class ForwardLosses(TrainerCallback):
    """The exact loss of every training forward (one per step, or one per micro-batch under gradient accumulation).

    The Trainer's logs round the loss to 4 digits and average it over logging steps; a forward hook on the model
    reads each loss as computed, so two runs can be compared with ``==``.
    """

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, inputs, output):
            if module.training and getattr(output, "loss", None) is not None:
                self.losses.append(output.loss.item())

        model.register_forward_hook(record)
