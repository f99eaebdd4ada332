"""Stop training at the first non-finite loss or gradient, naming the step and the batch's records.

Left alone, the HF Trainer hides a NaN/inf loss from its logs (``logging_nan_inf_filter`` replaces it with the
running mean) and still runs the backward and the optimizer step, so the weights turn NaN and every later
checkpoint, and the final model folder, is corrupt. One behaviour, no policy: a non-finite loss (checked right
after the forward, before any backward) or a non-finite gradient (checked before the optimizer step) raises
``NonFiniteLossError``; nothing of that step reaches the weights and nothing more is saved. Checkpoints written
before it are the ones to resume from (with a lower learning rate, or without the batch named).

Under fp16 mixed precision the gradient check is left to the loss scaler, whose job it is to skip steps with
overflowing gradients; the loss check stays.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

_MAX_NAMED = 8


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradient; the message names the step and the batch's records."""


class NonFiniteGuard(TrainerCallback):
    """``dataset`` (a ``ConversationDataset``) lets the error name the batch's records, not just its step."""

    def __init__(self, dataset: Any = None) -> None:
        self.dataset = dataset
        self._handle: Any = None
        self._state: Any = None
        self._check_grads = True
        self._batches: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        self._index: dict[bytes, str] | None = None

    # ---- hooks into the Trainer -----------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        self._state = state
        self._check_grads = not args.fp16
        if model is not None and self._handle is None:
            self._handle = model.register_forward_hook(self._after_forward, with_kwargs=True)
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._batches.clear()
        return control

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if self._check_grads and model is not None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                if not _all_finite(grads):
                    raise NonFiniteLossError(self._describe("non-finite gradients"))
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.remove()
        return control

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _after_forward(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if not module.training:
            return
        self._batches.append((kwargs.get("input_ids"), kwargs.get("attention_mask")))
        loss = _field(output, "loss")
        value = loss
        for name in ("token_losses", "logits"):  # the MFT loss is computed outside, from these
            if value is None:
                value = _field(output, name)
        if value is None or bool(torch.isfinite(value.detach()).all()):
            return
        what = f"loss is {float(value.detach()):g}" if loss is not None and value.numel() == 1 else "non-finite logits"
        raise NonFiniteLossError(self._describe(what))

    # ---- the message ------------------------------------------------------------------------------------------
    def _describe(self, what: str) -> str:
        state = self._state
        step = state.global_step + 1 if state is not None else "?"
        micro = len(self._batches)
        where = f"step {step}" + (f" (micro-batch {micro} of the step)" if micro > 1 else "")
        records = self._batch_records()
        named = f"; the batch's records: {', '.join(records)}" if records else ""
        message = (
            f"training stopped at {where}: {what}{named}. Nothing of this step reached the weights and nothing "
            "more was saved; resume from the last checkpoint (a lower learning_rate, or without these records)."
        )
        logger.error("%s", message)
        return message

    def _batch_records(self) -> list[str]:
        if not self._batches or self.dataset is None or not hasattr(self.dataset, "records"):
            return []
        input_ids, mask = self._batches[-1]
        if input_ids is None:
            return []
        index = self._record_index()
        names = []
        for row in range(input_ids.shape[0]):
            ids = input_ids[row] if mask is None else input_ids[row][mask[row].bool()]
            key = np.asarray(ids.detach().cpu(), dtype=np.int64).tobytes()
            names.append(index.get(key, f"row {row} (not matched to a record)"))
        if len(names) > _MAX_NAMED:
            names = names[:_MAX_NAMED] + [f"... {len(names) - _MAX_NAMED} more"]
        return names

    def _record_index(self) -> dict[bytes, str]:
        # Built only when a step fails: token ids -> "file record N (id '...')".
        if self._index is None:
            self._index = {}
            for input_ids, name in self.dataset.records():
                self._index.setdefault(np.asarray(input_ids, dtype=np.int64).tobytes(), name)
        return self._index


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: one fused pass, as clipping does
    if total_norm is not None:
        return bool(torch.isfinite(total_norm(tensors)))
    return all(bool(torch.isfinite(t.detach().float().norm())) for t in tensors)


def _field(output: Any, name: str) -> Any:
    if isinstance(output, dict):
        return output.get(name)
    return getattr(output, name, None)
