"""A fusevlm model as an lmms-eval model::

    lmms-eval --model fusevlm --model_args pretrained=DIR --batch_size 8 --tasks TASKS
    lmms_eval.evaluator.simple_evaluate(model="fusevlm", model_args="pretrained=DIR,batch_size=8", tasks=[...])

(the command line passes its own ``--batch_size`` to the model, so it does not go in ``--model_args`` there).

lmms-eval (0.7) is optional (``pip install -e ".[lmms]"``). It finds ``fusevlm`` through the ``lmms_eval.models``
entry point that fusevlm's package metadata declares (:func:`manifest`), so ``--model fusevlm`` and
``simple_evaluate(model="fusevlm", ...)`` resolve by name once fusevlm is installed. When lmms-eval is importable,
:class:`FuseVLM` subclasses its ``lmms`` base class; without it, the class stands on a small base with the same
attributes, so it can be driven (and tested) the way the harness drives it:

* ``generate_until(requests)``: ``request.args = (context, gen_kwargs, doc_to_visual, doc_id, task,
  split)``; the images are ``doc_to_visual(self.task_dict[task][split][doc_id])``.
* ``loglikelihood(requests)``: ``request.args = (context, doc_to_target, doc_to_visual, doc_id, task,
  split)``, where ``doc_to_target`` is the continuation or a function of the document. The result is lmms-eval's
  convention, ``(loss, is_greedy)``: the mean negative log-likelihood of the continuation's tokens.

Generation is greedy whatever ``gen_kwargs`` says (a sampling request is warned about once), in batches
of ``batch_size`` with the same encoding and stopping rules as ``fusevlm eval``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ..runner import DEFAULT_MAX_NEW_TOKENS, load_model
from ._common import continuation_loss, cut_at_stops, greedy_answers, vlm_prompt

try:  # the real harness, when installed
    from lmms_eval.api.model import lmms as _LmmsBase
except ImportError:  # same interface, so the adapter works (and is tested) without lmms-eval
    _LmmsBase = None

if _LmmsBase is None:

    class _NoCache:
        def add_partial(self, attr: str, req: Any, res: Any) -> None:
            pass

    class _LmmsBase:  # type: ignore[no-redef]
        """The part of ``lmms_eval.api.model.lmms`` the harness relies on."""

        def __init__(self) -> None:
            self._rank = 0
            self._world_size = 1
            self.cache_hook = _NoCache()
            self.task_dict: dict[str, Any] = {}

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: lmms-eval's registry entry for ``fusevlm`` (a "simple" model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="fusevlm", simple_class_path=f"{__name__}.FuseVLM")


class FuseVLM(_LmmsBase):
    """lmms-eval model backed by a fusevlm model folder."""

    is_simple = True  # the "simple" (doc_to_visual) request protocol, not the chat-messages one

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 1,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        device: str | None = None,
        dtype: str | None = None,
        **unused: Any,
    ) -> None:
        self.pretrained = str(pretrained)  # set first: lmms' __init__ names its cache folder after it
        super().__init__()
        if unused:  # lmms-eval passes generic options some backends ignore; say so rather than drop silently
            warnings.warn(f"fusevlm lmms-eval adapter ignores {sorted(unused)}", stacklevel=2)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self._setup_processes()
        self.model, self.processor = load_model(pretrained, device=device, dtype=dtype)
        self._warned_sampling = False

    def _setup_processes(self) -> None:
        """Under ``accelerate launch`` the harness shards the requests by ``rank`` and waits on ``accelerator``."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---- requests ---------------------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: Any) -> Any:
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual: Callable[[Any], Any] | None, task: str, split: str, doc_id: Any) -> list[Any]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self._doc(task, split, doc_id))
        if visuals is None:
            return []
        return list(visuals) if isinstance(visuals, list | tuple) else [visuals]

    def _max_new_tokens(self, gen_kwargs: dict[str, Any]) -> int:
        if not self._warned_sampling and (
            gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0) > 0 or (gen_kwargs.get("num_beams") or 1) > 1
        ):
            warnings.warn("fusevlm generates greedily; sampling and beam settings are ignored", stacklevel=3)
            self._warned_sampling = True
        return int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))

    @staticmethod
    def _stops(gen_kwargs: dict[str, Any]) -> list[str]:
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            return [until]
        if not isinstance(until, list | tuple):
            raise ValueError(f"gen_kwargs['until'] must be a string or a list of strings, got {type(until).__name__}")
        return list(until)

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Greedy answers in request order, batched among requests asking the same ``max_new_tokens``."""
        by_length: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            by_length.setdefault(self._max_new_tokens(request.args[1]), []).append(index)
        results: list[str] = [""] * len(requests)
        for max_new_tokens, indices in by_length.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                prompts = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    visuals = self._visuals(doc_to_visual, task, split, doc_id)
                    prompts.append(vlm_prompt(context, visuals, self.processor.image_token))
                answers = greedy_answers(self.model, self.processor, prompts, max_new_tokens)
                for i, answer in zip(chunk, answers, strict=True):
                    context, gen_kwargs = requests[i].args[:2]
                    results[i] = cut_at_stops(answer, self._stops(gen_kwargs))
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), results[i])
        return results

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """``(loss, is_greedy)`` per request: the continuation's mean token loss given context and images (lower is
        likelier, as lmms-eval's multiple-choice scoring expects), and whether greedy decoding produces it."""
        results = []
        for request in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self._doc(task, split, doc_id))
            prompt = vlm_prompt(context, self._visuals(doc_to_visual, task, split, doc_id), self.processor.image_token)
            results.append(continuation_loss(self.model, self.processor, prompt, str(continuation)))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), results[-1])
        return results

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError("fusevlm's lmms-eval adapter answers single-round tasks only (generate_until)")
