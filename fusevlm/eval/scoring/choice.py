"""Rule-based extraction of a multiple-choice answer from free text: VLMEvalKit's ``can_infer``.

The rules reproduced are those of VLMEvalKit v0.2 (tag ``v0.2``, commit e4e0263, 2025-03-22;
``vlmeval/utils/matching_util.py``: ``can_infer_option`` then ``can_infer_text``), the "exact matching" path used
for MMBench when no LLM judge is involved. They are unchanged from v0.1 (2024-01) through v0.3rc1 (2025-06).
Later commits on VLMEvalKit's main branch change them: from c3371551 (2025-08-04) the letter must be among the
last four words and option text is not searched in answers longer than twice the options' text; from a67ace50
(2026-06) "answer is X" is matched first. Those are not reproduced.

1. Refusals. If the text contains one of :data:`REFUSALS`, the answer is ``"Z"`` (no option). A text containing
   ``"Failed to obtain answer via API"`` skips step 2.
2. Option letter as a word. The characters ``.()[],:;!*#{}`` become spaces and the text is split on whitespace.
   If exactly one of the option letters is a token, that letter is the answer. If no option letter is a token but
   ``Z`` is, the answer is ``"Z"``. Letters are case-sensitive ("b" is not "B").
3. Option text. Otherwise, if exactly one option's text (lower-cased) is a substring of the lower-cased answer,
   that option is the answer.
4. Otherwise the answer is unresolved (scored wrong: VLMEvalKit records ``"Z"`` without a judge).

The article rule. VLMEvalKit applies one more rule only when its ``VERBOSE`` environment variable is set (to any
non-empty value, ``VERBOSE=0`` included): in step 2, when ``A`` is a token and there are more than three tokens,
``A`` may be the article ("A cat is ..."), and the letter step gives up, leaving the option text to decide. Its
default runs, the ones behind published MMBench figures, do not apply it, so neither does ``rules="official"``;
``rules="verbose"`` (``article_rule=True``) reproduces a run with ``VERBOSE`` set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

REFUSALS: tuple[str, ...] = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = ".()[],:;!*#{}"
NO_OPTION = "Z"
API_FAILURE = "Failed to obtain answer via API"


@dataclass(frozen=True)
class Choice:
    """Outcome of extraction: ``letter`` (``None`` if unresolved, ``"Z"`` for "no option") and how."""

    letter: str | None
    how: str  # "letter", "text", "refusal", "none-of-the-options", "ambiguous", "no-match"


def _tokens(answer: str) -> list[str]:
    for ch in _SEPARATORS:
        answer = answer.replace(ch, " ")
    return answer.split()


def letter_from_tokens(answer: str, options: Mapping[str, str], article_rule: bool = False) -> str | None:
    """Step 1-2: the option letter written as a word, ``"Z"`` for a refusal, or ``None``."""
    if API_FAILURE in answer:
        return None
    if any(r in answer for r in REFUSALS):
        return NO_OPTION
    tokens = _tokens(answer)
    found = [letter for letter in options if letter in tokens]
    if len(found) == 1:
        if article_rule and "A" in tokens and len(tokens) > 3:
            return None
        return found[0]
    if not found and NO_OPTION in tokens:
        return NO_OPTION
    return None


def letter_from_text(answer: str, options: Mapping[str, str]) -> str | None:
    """Step 3: the single option whose text occurs in the answer (case-insensitive), else ``None``."""
    low = answer.lower()
    found = [letter for letter, text in options.items() if str(text).lower() in low]
    return found[0] if len(found) == 1 else None


def extract_choice(answer: str, options: Mapping[str, str], article_rule: bool = False) -> Choice:
    """Resolve ``answer`` to one of ``options`` (letter -> option text) by the rules above; ``article_rule``: the
    rule VLMEvalKit applies under ``VERBOSE``."""
    answer = str(answer)
    letter = letter_from_tokens(answer, options, article_rule)
    if letter == NO_OPTION:
        how = "refusal" if any(r in answer for r in REFUSALS) else "none-of-the-options"
        return Choice(NO_OPTION, how)
    if letter is not None:
        return Choice(letter, "letter")
    letter = letter_from_text(answer, options)
    if letter is not None:
        return Choice(letter, "text")
    tokens = _tokens(answer)
    low = answer.lower()
    several_letters = sum(1 for letter in options if letter in tokens) > 1
    several_texts = sum(1 for text in options.values() if str(text).lower() in low) > 1
    return Choice(None, "ambiguous" if several_letters or several_texts else "no-match")
