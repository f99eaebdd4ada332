"""Checkpoints that survive a kill or a full disk: pick only complete ones, say clearly when a save failed, and
write the final model folder so that a failed save never destroys the folder that was there.

transformers 5.24's Trainer writes ``checkpoint-N/`` in place (no temporary folder, no rename): the weights, then
the optimizer, scheduler and RNG states, and ``trainer_state.json`` last. A process killed mid-save therefore
leaves a folder that *looks* like the newest checkpoint, and ``get_last_checkpoint`` (what
``resume_from_checkpoint=True`` uses) would pick it. Here a checkpoint counts as complete when its
``trainer_state.json`` parses and names the folder's own step: that file is written after everything else, so it
is only there, whole, when the rest is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
STAGING_DIR = ".fusevlm-saving"
# Weight files a model folder may hold; a new save replaces all of them (transformers' own cleanup rule).
_WEIGHT_FILES = re.compile(
    r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$"
    r"|^(model|pytorch_model)\.(safetensors|bin)\.index\.json$"
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from, or a save that failed; the message says which and what is left."""


# ---- which checkpoints are complete -----------------------------------------------------------------------------
def checkpoint_step(folder: str | os.PathLike) -> int | None:
    match = CHECKPOINT_PATTERN.match(Path(folder).name)
    return int(match.group(1)) if match else None


def incomplete_reason(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    state = folder / TRAINER_STATE
    if not state.is_file():
        return f"no {TRAINER_STATE} (the save was interrupted before its last file)"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{TRAINER_STATE} is unreadable or cut short ({err})"
    step = checkpoint_step(folder)
    if not isinstance(data, dict) or (step is not None and data.get("global_step") != step):
        return f"{TRAINER_STATE} does not describe step {step}"
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint; newer incomplete ones are skipped with a warning that names them."""
    for folder in reversed(list_checkpoints(output_dir)):
        reason = incomplete_reason(folder)
        if reason is None:
            return folder
        logger.warning("skipping incomplete checkpoint %s: %s", folder, reason)
    return None


def resolve_resume(value: Any, output_dir: str | os.PathLike) -> str | bool | None:
    """``resume_from_checkpoint`` as the Trainer should get it: ``last``/``true`` -> the newest *complete*
    checkpoint of ``output_dir``; a path -> that path, if it is a complete checkpoint. A ``CheckpointError``
    otherwise, raised before any weights load."""
    if value in (None, False, "", "false", "False"):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("last", "true")):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            seen = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
            raise CheckpointError(
                f"resume_from_checkpoint=last: no complete checkpoint in {str(output_dir)!r} (checkpoint folders: "
                f"{seen}); remove resume_from_checkpoint to start from scratch"
            )
        return str(found)
    reason = incomplete_reason(value)
    if reason is not None:
        raise CheckpointError(f"resume_from_checkpoint {str(value)!r} cannot be resumed from: {reason}")
    return str(value)


# ---- saves that fail -------------------------------------------------------------------------------------------
def describe_os_error(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({err})"
    return str(err)


class SaveWatch(TrainerCallback):
    """Knows when the Trainer is writing a checkpoint, so an ``OSError`` raised then becomes a
    ``CheckpointError`` naming the partial folder and the last complete one (``translate_errors``)."""

    def __init__(self) -> None:
        self.saving_step: int | None = None
        self.output_dir: str | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # DefaultFlowCallback ran first and decided; the Trainer saves right after the step's logging.
        self.output_dir = args.output_dir
        self.saving_step = state.global_step if control.should_save else None
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return self.on_step_end(args, state, control)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.saving_step = None
        return control

    @contextlib.contextmanager
    def translate_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            if self.saving_step is None or self.output_dir is None:
                raise
            partial = Path(self.output_dir) / f"checkpoint-{self.saving_step}"
            previous = last_complete_checkpoint(self.output_dir)
            kept = f"the last complete checkpoint, {previous}, is intact" if previous else "no earlier checkpoint exists"
            raise CheckpointError(
                f"saving checkpoint {partial} failed: {describe_os_error(err)}. That folder is incomplete and "
                f"resume_from_checkpoint=last skips it; {kept}."
            ) from err


# ---- the final model folder ------------------------------------------------------------------------------------
@contextlib.contextmanager
def staged_folder(
    output: str | os.PathLike, *, is_main: bool = True, barrier: Callable[[], None] | None = None
) -> Iterator[Path]:
    """Write a model folder's files into ``output/.fusevlm-saving/`` and move them into ``output`` only once all
    are written; on failure the staging folder is removed and ``output``'s existing files are left as they were.

    The moves are ``os.replace`` within one file system (each file is replaced whole). Weight files of an earlier
    save that the new save does not have (old shards, an old index) are removed after the move, as
    ``save_pretrained`` does. ``barrier`` (called on all ranks) separates the writes from the main process's moves,
    and the moves from whatever comes next.
    """
    output = Path(output)
    stage = output / STAGING_DIR
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)  # left by a run that died mid-save
        stage.mkdir()
    if barrier is not None:
        barrier()
    try:
        yield stage
        if barrier is not None:
            barrier()
    except BaseException as err:
        if is_main:
            shutil.rmtree(stage, ignore_errors=True)
        if isinstance(err, OSError):
            raise CheckpointError(
                f"saving the model folder {output} failed: {describe_os_error(err)}. Nothing in {output} was "
                "replaced: the files there before this save are intact."
            ) from err
        raise
    if is_main:
        _publish(stage, output)
    if barrier is not None:
        barrier()  # no rank goes on before the folder is in place


def _publish(stage: Path, output: Path) -> None:
    new_names = {p.name for p in stage.iterdir()}
    for item in sorted(stage.iterdir()):
        target = output / item.name
        if item.is_dir() and target.is_dir():
            old = output / f".{item.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(item, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(item, target)
    for stale in output.iterdir():
        if stale.is_file() and stale.name not in new_names and _WEIGHT_FILES.match(stale.name):
            stale.unlink()
    stage.rmdir()
