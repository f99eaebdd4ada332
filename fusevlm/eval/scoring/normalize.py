"""Answer normalisation for open-ended VQA benchmarks (VQAv2, TextVQA, VizWiz).

Two rule sets are implemented, each reproducing a public reference scorer's behaviour exactly,
quirks included:

``official``
    GT-Vision-Lab ``vqaEval.py`` (current Python 3 version). :func:`process_punctuation` and
    :func:`process_digit_article` are its two normalisation steps. How they are applied to the
    prediction and to the human answers lives in :mod:`fusevlm.eval.scoring.vqa`.

``evalai``
    The ``EvalAIAnswerProcessor`` of the EvalAI/M4C evaluator used by LLaVA's conversion scripts
    and by lmms-eval: :func:`evalai_normalize`. It adds a word-tokenisation step in front and
    detects "comma between digits" with a slightly different pattern.

Quirks reproduced on purpose (they change scores):

* Punctuation: for each character of :data:`PUNCTUATION`, if the *original* text has that character
  next to a space, or the original text has a comma between two digits anywhere, the character is
  deleted; otherwise it is replaced by a space. So ``"t-shirt"`` becomes ``"t shirt"`` but
  ``"t - shirt"`` becomes ``"t  shirt"``, and ``"1,000 (approx)"`` becomes ``"1000 approx"``.
* Periods not followed by a digit are removed (``"3.5"`` keeps its period). The reference passes
  ``re.UNICODE`` (== 32) as the positional ``count`` argument of ``re.sub``, so at most 32 periods
  are removed; that limit is kept.
* Apostrophes and colons are not punctuation here (``"don't"`` and ``"10:30"`` survive).
* Number words ``none, zero .. ten`` become digits and the articles ``a, an, the`` are dropped,
  word by word after lower-casing; then contractions without apostrophes are restored
  (``"dont"`` -> ``"don't"``). The reference table also has capitalised keys (``"Im"``, ``"Ive"``,
  ``"Id've"``, ``"I'dve"``); as words are lower-cased first those entries can never apply, so they
  are left out here without changing any result.
"""

from __future__ import annotations

import re
from functools import lru_cache

PUNCTUATION: tuple[str, ...] = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)

# A period that is not followed by a digit. (The reference writes a look-*ahead* "(?!<=\d)" where a
# look-behind was probably meant; as written it never prevents a match, so it is omitted.)
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX_REMOVED = 32  # re.UNICODE passed positionally as `count` by the reference

_COMMA_BETWEEN_DIGITS = {
    "official": re.compile(r"\d,\d"),
    "evalai": re.compile(r"(?<=\d),+(?=\d)"),
}

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})


def _build_contractions() -> dict[str, str]:
    """Lower-case contraction table: written form without (some) apostrophes -> canonical form.

    Most entries are "the canonical form minus its apostrophes"; the extra spellings (apostrophe kept
    in one place but not the other, and one entry that maps the other way round) are listed apart.
    """
    canonical = (
        "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd "
        "how'll how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock "
        "oughtn't shan't should've shouldn't somebody'll somebody's someone'd someone'll someone's "
        "something'd something'll that's there'd there're there's they'd they'll they're they've "
        "wasn't we've weren't what'll what're what's what've when's where'd where's where've who'd "
        "who'll who's who've why'll why're why's won't would've wouldn't y'all you'd you'll you're you've"
    ).split()
    table = {word.replace("'", ""): word for word in canonical}
    # "<x>'ve" forms: spelled without any apostrophe, or with only one of them.
    double = {
        "couldn't've": ("couldn'tve", "couldnt've"),
        "hadn't've": ("hadnt've", "hadn'tve"),
        "he'd've": ("hed've", "he'dve"),
        "it'd've": ("itd've", "it'dve"),
        "mightn't've": ("mightnt've", "mightn'tve"),
        "she'd've": ("shed've", "she'dve"),
        "shouldn't've": ("shouldnt've", "shouldn'tve"),
        "somebody'd've": ("somebodyd've", "somebody'dve"),
        "someone'd've": ("someoned've", "someone'dve"),
        "something'd've": ("somethingd've", "something'dve"),
        "there'd've": ("thered've", "there'dve"),
        "they'd've": ("theyd've", "they'dve"),
        "we'd've": ("wed've", "we'dve"),
        "who'd've": ("whod've", "who'dve"),
        "wouldn't've": ("wouldnt've", "wouldn'tve"),
        "you'd've": ("youd've", "you'dve"),
        "y'all'll": ("yall'll", "y'allll"),
        "y'all'd've": ("yall'd've", "y'alld've", "y'all'dve"),
        "'ow's'at": ("ow's'at", "'ows'at", "'ow'sat"),
    }
    for target, spellings in double.items():
        for spelling in spellings:
            table[spelling] = target
    table.update({"twas": "'twas", "let's": "let's", "she's": "she's", "somebody'd": "somebodyd"})
    return table


CONTRACTIONS: dict[str, str] = _build_contractions()


@lru_cache(maxsize=1 << 18)
def process_punctuation(text: str, variant: str = "official") -> str:
    """Punctuation step of the reference scorers (``variant``: ``"official"`` or ``"evalai"``)."""
    present = [p for p in PUNCTUATION if p in text]
    if present:
        strip_all = "," in text and _COMMA_BETWEEN_DIGITS[variant].search(text) is not None
        out = text
        for p in present:
            if strip_all or (p + " ") in text or (" " + p) in text:
                out = out.replace(p, "")
            else:
                out = out.replace(p, " ")
    else:
        out = text
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVED) if "." in out else out


@lru_cache(maxsize=1 << 18)
def process_digit_article(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions; re-join with spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def clean_whitespace(text: str) -> str:
    """Newlines and tabs become spaces, then surrounding whitespace is stripped (both rule sets)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def official_normalize(text: str) -> str:
    """Normalisation the GT-Vision-Lab scorer applies to a *prediction*."""
    return process_digit_article(process_punctuation(clean_whitespace(text), "official"))


def evalai_normalize(text: str) -> str:
    """The EvalAI/M4C ``EvalAIAnswerProcessor``: applied to predictions (and, for TextVQA, answers).

    Steps: lower-case; delete every ``,`` and ``?``; split a possessive ``'s`` off its word; strip;
    newlines/tabs to spaces; then the punctuation and digit/article/contraction steps. Since commas
    are already gone, the "comma between digits" rule never fires in this processor.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = clean_whitespace(text)
    return process_digit_article(process_punctuation(text, "evalai"))


def normalize_answer(text: str, rules: str = "official") -> str:
    """Normalise a *prediction* under ``rules`` (``"official"`` or ``"evalai"``)."""
    if rules == "official":
        return official_normalize(text)
    if rules == "evalai":
        return evalai_normalize(text)
    raise ValueError(f"unknown VQA rule set {rules!r}; choose 'official' or 'evalai'")
