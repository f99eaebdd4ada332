"""The HF Trainer with what a VLM recipe adds: per-part learning rates, the seed's MFT loss with per-task logs,
modality/length grouping, and the bad samples met while loading images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.errors import DataError
from ..data.report import BadSampleReport
from ..data.streaming import StreamingDataset
from .samplers import ModalityLengthGroupedSampler, TaskInterleavedSampler

IGNORE_INDEX = -100


def stream_state_file(rank: int) -> str:
    """The file in a checkpoint that holds rank ``rank``'s position in a streamed dataset."""
    return f"data_state-{rank}.pt"


def per_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy per position (B, T-1) and the mask of trained positions."""
    shifted_labels = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), shifted_labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(shifted_labels.shape)
    return losses, shifted_labels != IGNORE_INDEX


def mft_loss(
    logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, num_tasks: int, mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`mft_loss_from_token_losses` from full logits (B, T, vocab)."""
    losses, mask = per_token_losses(logits, labels)
    return mft_loss_from_token_losses(losses, mask, task_ids, num_tasks, mode)


def mft_loss_from_token_losses(
    token_losses: torch.Tensor,
    mask: torch.Tensor,
    task_ids: torch.Tensor,
    num_tasks: int,
    mode: str,
    sample_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seed's multi-task loss: each task's loss, then their mean, so a large task does not drown a small one.

    ``token_losses`` and ``mask`` (B, T-1): the loss of predicting token t+1 at position t, and whether that token
    is trained. ``task_ids`` (num_samples,): each sample's task. Without ``sample_index`` sample i is row i; with it
    (a packed batch, (B, T) long: each token's sample number in ``task_ids`` order, -1 on padding) a loss belongs to
    the sample of the token it predicts.

    ``token``: a task's loss is the mean over its trained tokens; ``sample``: the mean over its samples of each
    sample's token mean. Returns (loss, per-task token-loss sums, per-task token counts) - the sums feed logging.
    """
    losses = token_losses.float()
    mask = mask.to(torch.bool)
    num_samples = task_ids.shape[0]
    if sample_index is None:
        token_sums = (losses * mask).sum(dim=1)
        token_counts = mask.sum(dim=1).to(losses.dtype)
    else:
        owner = sample_index[:, -mask.shape[1] :]  # the sample of each predicted token
        keep = mask & (owner >= 0)
        owner = owner[keep]
        token_sums = losses.new_zeros(num_samples).index_add(0, owner, losses[keep])
        token_counts = losses.new_zeros(num_samples).index_add(0, owner, keep.new_ones(owner.shape, dtype=losses.dtype))
    one_hot = F.one_hot(task_ids, num_tasks).to(losses.dtype)  # (samples, tasks)
    task_sums = one_hot.T @ token_sums
    task_counts = one_hot.T @ token_counts
    if mode == "token":
        task_loss = task_sums / task_counts.clamp(min=1)
        present = task_counts > 0
    else:
        has_tokens = (token_counts > 0).to(losses.dtype)
        sample_means = token_sums / token_counts.clamp(min=1)
        samples = one_hot.T @ has_tokens
        task_loss = (one_hot.T @ sample_means) / samples.clamp(min=1)
        present = samples > 0
    loss = (task_loss * present).sum() / present.sum().clamp(min=1)
    return loss, task_sums.detach(), task_counts.detach()


class VLMTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        tasks: list[str] | None = None,
        mft_loss_mode: str | None = None,
        projector_lr: float | None = None,
        vision_lr: float | None = None,
        group_by_modality_length: bool = False,
        data_report: BadSampleReport | None = None,
        stream_state: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.tasks = tasks or ["default"]
        self.mft_loss_mode = mft_loss_mode
        self.projector_lr = projector_lr
        self.vision_lr = vision_lr
        self.group_by_modality_length = group_by_modality_length
        self.data_report = data_report if data_report is not None else BadSampleReport()
        self.stream_state = stream_state
        self._stream_loader: Any = None
        self._bad_seen: set[tuple[str, int]] = set()
        self._task_sums = torch.zeros(len(self.tasks), dtype=torch.float64)
        self._task_counts = torch.zeros(len(self.tasks), dtype=torch.float64)
        if mft_loss_mode is not None:
            # The MFT loss is a per-batch mean: the Trainer divides it by the gradient accumulation steps.
            self.loss_is_scaled_for_ga = False

    # ---- optimizer: the projector and the vision tower may have their own learning rates -------------------
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            lr = self.args.learning_rate
            if self.projector_lr is not None and "projector." in name:
                lr = self.projector_lr
            elif self.vision_lr is not None and "vision_tower." in name:
                lr = self.vision_lr
            weight_decay = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((lr, weight_decay), []).append(param)
        param_groups = [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # ---- streamed data: a stateful loader whose position is saved with each checkpoint ----------------------
    def get_train_dataloader(self) -> Any:
        if not isinstance(self.train_dataset, StreamingDataset):
            return super().get_train_dataloader()
        from torchdata.stateful_dataloader import StatefulDataLoader

        workers = self.args.dataloader_num_workers
        # The dataset is split by rank already (split_dataset_by_node), so the loader is not sharded again.
        loader = StatefulDataLoader(
            self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
            num_workers=workers, pin_memory=self.args.dataloader_pin_memory,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
            persistent_workers=self.args.dataloader_persistent_workers if workers else False,
        )
        if self.stream_state is not None:
            loader.load_state_dict(self.stream_state)
        self._stream_loader = loader
        return loader

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self._stream_loader is not None:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            torch.save(self._stream_loader.state_dict(), folder / stream_state_file(self.args.process_index))

    # ---- sampling ------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.mft_loss_mode is not None:
            return TaskInterleavedSampler(dataset.task_ids, seed=self.args.seed)
        if self.group_by_modality_length:
            group = self.args.per_device_train_batch_size * self.args.world_size
            return ModalityLengthGroupedSampler(dataset.lengths, group, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    # ---- loss ----------------------------------------------------------------------------------------------
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        task_ids = inputs.pop("task_ids", None)
        sample_index = inputs.pop("sample_index", None)
        inputs.pop("sample_ids", None)
        for error in inputs.pop("data_errors", []):
            # A bad image is met again every epoch: count each record once.
            key = (error["dataset"], error["index"])
            if key not in self._bad_seen:
                self._bad_seen.add(key)
                self.data_report.add(error["dataset"], DataError(error["message"], reason=error["reason"]))
        if self.mft_loss_mode is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**inputs)  # in training, the model computes the head and the loss at trained positions only
        targets = inputs.get("shift_labels")
        targets = labels[:, 1:] if targets is None else targets
        loss, sums, counts = mft_loss_from_token_losses(
            outputs.token_losses, targets != IGNORE_INDEX, task_ids, len(self.tasks), self.mft_loss_mode, sample_index
        )
        if model.training:  # the per-task logs are training losses; evaluation's own loss is logged apart
            self._task_sums += sums.cpu().double()
            self._task_counts += counts.cpu().double()
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Training logs gain ``loss_<task>``: each task's mean token loss since the last log, over all ranks."""
        if self.mft_loss_mode is not None and "loss" in logs:
            totals = torch.stack([self._task_sums, self._task_counts]).to(self.args.device)
            totals = self.accelerator.reduce(totals, reduction="sum").cpu()
            for task, total, count in zip(self.tasks, totals[0].tolist(), totals[1].tolist(), strict=True):
                if count > 0:
                    logs[f"loss_{task}"] = round(total / count, 4)
            self._task_sums.zero_()
            self._task_counts.zero_()
        super().log(logs, *args, **kwargs)
