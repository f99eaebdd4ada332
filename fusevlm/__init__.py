"""fusevlm: compose, train, evaluate and serve LLaVA-style vision-language models."""

import importlib.util
import sys
import warnings


def _hide_a_broken_torchvision() -> None:
    """transformers imports torchvision whenever one is installed, and one built for another torch fails at that
    import ("operator torchvision::nms does not exist": lmms-eval's requirement pulls PyPI's CUDA build beside a CPU
    torch), taking every transformers model down with it. Such a torchvision is treated as absent: transformers
    then uses its PIL image processors, which fusevlm uses anyway."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # a missing operator (RuntimeError), a missing CUDA library (OSError), ...
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # importlib.util.find_spec now reports it missing
        warnings.warn(f"torchvision is installed but does not import ({err}); it probably does not match this "
                      "torch build. fusevlm runs without it; install the torchvision that pairs with your torch, "
                      "or uninstall it.", RuntimeWarning, stacklevel=2)


_hide_a_broken_torchvision()

from .models import (  # noqa: E402
    FuseVLMConfig,
    FuseVLMForConditionalGeneration,
    build_vlm,
    load_mixed_pretrained_model,
)
from .processing import FuseVLMProcessor  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FuseVLMConfig",
    "FuseVLMForConditionalGeneration",
    "FuseVLMProcessor",
    "build_vlm",
    "load_mixed_pretrained_model",
]
