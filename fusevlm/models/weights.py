"""Reading weights files other code bases wrote, and loading them strictly (every tensor named, none left over)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a pickle with ``weights_only=True`` (never arbitrary objects)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    target: str,
    file_names: dict[str, str] | None = None,
) -> None:
    """Load ``state`` into ``module`` only if every tensor is there with the right shape and nothing is left over.

    The error names ``source`` (a file), ``target`` (what it should fit) and the keys: missing ones by the module's
    names, unexpected ones by the file's own names (``file_names`` maps a renamed key back to the file's).
    """
    own = module.state_dict()
    file_names = file_names or {}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(file_names.get(k, k) for k in set(state) - set(own))
    wrong = sorted(
        f"{file_names.get(k, k)} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:6])}{f' and {len(keys) - 6} more' if len(keys) > 6 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if keys
        )
        raise ValueError(f"{source}: does not fit {target}: {details}")
    module.load_state_dict(state, strict=True)
