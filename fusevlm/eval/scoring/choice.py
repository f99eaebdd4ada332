"""Rule-based extraction of a multiple-choice answer from free text (VLMEvalKit ``can_infer``).

This is the "exact matching" path of VLMEvalKit / OpenCompass used for MMBench when no LLM judge is
involved:

1. Refusals. If the text contains one of :data:`REFUSALS`, the answer is ``"Z"`` (no option).
2. Option letter as a word. The characters ``.()[],:;!*#{}`` become spaces and the text is split
   on whitespace. If exactly one of the option letters is a token, that letter is the answer -
   except when that letter is ``A``, more than three tokens are present, because "A" may then be
   the article ("A cat is ..."); the letter step then gives up. If no option letter is a token but
   ``Z`` is, the answer is ``"Z"``. Letters are case-sensitive ("b" is not "B").
3. Option text. Otherwise, if exactly one option's text (lower-cased) is a substring of the
   lower-cased answer, that option is the answer.
4. Otherwise the answer is unresolved (scored wrong).

Quirk kept: ``"The answer is A"`` has four tokens, so step 2 refuses the letter ``A`` and only the
option-text step can still resolve it.
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


@dataclass(frozen=True)
class Choice:
    """Outcome of extraction: ``letter`` (``None`` if unresolved, ``"Z"`` for "no option") and how."""

    letter: str | None
    how: str  # "letter", "text", "refusal", "none-of-the-options", "ambiguous", "no-match"


def _tokens(answer: str) -> list[str]:
    for ch in _SEPARATORS:
        answer = answer.replace(ch, " ")
    return answer.split()


def letter_from_tokens(answer: str, options: Mapping[str, str]) -> str | None:
    """Step 1-2: the option letter written as a word, ``"Z"`` for a refusal, or ``None``."""
    if any(r in answer for r in REFUSALS):
        return NO_OPTION
    tokens = _tokens(answer)
    found = [letter for letter in options if letter in tokens]
    if len(found) == 1:
        if "A" in tokens and len(tokens) > 3:
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


def extract_choice(answer: str, options: Mapping[str, str]) -> Choice:
    """Resolve ``answer`` to one of ``options`` (letter -> option text) by the rules above."""
    answer = str(answer)
    letter = letter_from_tokens(answer, options)
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
