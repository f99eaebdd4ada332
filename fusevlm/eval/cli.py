"""``fusevlm eval``: the command line over :func:`fusevlm.eval.runner.evaluate` / ``evaluate_many``.

One benchmark::

    fusevlm eval --model out/instruct --benchmark textvqa --data TextVQA_0.5.1_val.json \\
        --images textvqa/train_images --out results/textvqa [--limit 100] [--batch-size 16]

Several, one model load and one combined table (``out/<name>/`` for each, ``out/scores.md`` for all)::

    fusevlm eval --model out/instruct --benchmarks gqa,mmbench,textvqa \\
        --data gqa=gqa/testdev_balanced_questions.json,mmbench=MMBench_DEV_EN.tsv \\
        --data textvqa=TextVQA_0.5.1_val.json \\
        --images gqa=gqa/images,textvqa=textvqa/train_images --out results

``--data`` and ``--images`` take ``NAME=PATH`` pairs, comma-separated and/or repeated (a comma only
separates pairs when ``NAME=`` follows it, so paths may hold commas). With one ``--benchmark`` a bare
``PATH`` is enough; a bare ``--images DIR`` is shared by every benchmark that names none (VQAv2 and POPE
both read COCO val2014). Data parallel: ``torchrun --nproc_per_node 8 -m fusevlm.cli eval ...``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .runner import DEFAULT_MAX_NEW_TOKENS, EvalError, distributed, evaluate, evaluate_many, render_report
from .scoring import SCORERS


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``fusevlm eval``'s options to ``parser`` (the caller registers :func:`run_eval` as its runner)."""
    parser.add_argument("--model", required=True, type=Path, help="a fusevlm model folder")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--benchmark", help=" | ".join(SCORERS))
    which.add_argument("--benchmarks", help="several, comma-separated: gqa,mmbench,textvqa (one combined table)")
    parser.add_argument(
        "--data", required=True, action="append",
        help="the benchmark's official question file (or folder); with --benchmarks NAME=PATH pairs, "
        "comma-separated or repeated",
    )
    parser.add_argument(
        "--images", action="append", default=None,
        help="the benchmark's image folder (not needed for MMBench); NAME=DIR pairs with --benchmarks, "
        "a bare DIR for all",
    )
    parser.add_argument("--out", required=True, type=Path, help="answers file(s), scores.json and scores.md go here")
    parser.add_argument("--limit", type=int, default=None,
                        help="answer only the first N questions (the report says: scored N of M)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch (per process)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--rules", default="official", choices=("official", "evalai", "verbose"),
                        help="evalai: EvalAI's answer normalisation for VQAv2/TextVQA/VizWiz; verbose: MMBench choice "
                        "extraction with VLMEvalKit's VERBOSE article rule (others always use their official rules)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default: the dtype the model folder was saved in")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _split_pairs(values: list[str], names: list[str]) -> list[str]:
    """``a=x,b=y`` -> ``["a=x", "b=y"]``, splitting only at commas followed by a benchmark name and '='."""
    known = "|".join(re.escape(n) for n in sorted(set(names) | set(SCORERS), key=len, reverse=True))
    pieces = []
    for value in values:
        pieces += re.split(rf",(?=\s*(?:{known})=)", value)
    return [p.strip() for p in pieces if p.strip()]


def parse_named_paths(
    values: list[str] | None, names: list[str], option: str, bare_for_all: bool
) -> dict[str, Path]:
    """``NAME=PATH`` pairs for ``names``; a bare ``PATH`` is allowed only with one name (or ``bare_for_all``)."""
    mapping: dict[str, Path] = {}
    bare: list[str] = []
    for piece in _split_pairs(values or [], names):
        name, sep, path = piece.partition("=")
        if sep and name.strip() in SCORERS:
            name = name.strip()
            if name not in names:
                raise EvalError(f"{option} {piece!r}: {name} is not among the benchmarks ({', '.join(names)})")
            if name in mapping:
                raise EvalError(f"{option}: {name} is given twice")
            mapping[name] = Path(path)
        else:
            bare.append(piece)
    if bare:
        if len(bare) > 1:
            raise EvalError(f"{option}: several paths without a benchmark name: {', '.join(bare)}")
        if len(names) > 1 and not bare_for_all:
            raise EvalError(f"{option} {bare[0]!r}: with several benchmarks, name each path: {option} NAME=PATH")
        for name in names:
            mapping.setdefault(name, Path(bare[0]))
    return mapping


def _benchmark_names(args: argparse.Namespace) -> list[str]:
    names = [args.benchmark] if args.benchmark else [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise EvalError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(SCORERS)}")
    return names


def run_eval(args: argparse.Namespace) -> int:
    """Run ``fusevlm eval`` from parsed arguments; prints the score table and returns 0.

    Bad input raises :class:`EvalError` / ``ScoringError`` (both ``ValueError``s naming the file, the
    question or the option), which ``fusevlm.cli.main`` prints as one line with exit status 2.
    """
    names = _benchmark_names(args)
    data = parse_named_paths(args.data, names, "--data", bare_for_all=False)
    images = parse_named_paths(args.images, names, "--images", bare_for_all=True)
    lacking = [n for n in names if n not in data]
    if lacking:
        raise EvalError(f"--data: no data file for {', '.join(lacking)} (give {lacking[0]}=PATH)")
    common = dict(out=args.out, limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                  rules=args.rules, dtype=args.dtype, progress=not args.no_progress)
    with distributed() as rank:  # one process group for every benchmark of the run
        if args.benchmark:
            results = [evaluate(args.model, names[0], data[names[0]], images.get(names[0]), **common)]
        else:
            specs = [(n, data[n], images.get(n)) for n in names]
            results = evaluate_many(args.model, specs, **common)
        if rank.is_main:
            print(render_report(results), end="")
            print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fusevlm.eval.cli`` (handy under torchrun until ``fusevlm eval`` is registered)."""
    parser = add_eval_arguments(argparse.ArgumentParser(prog="fusevlm eval", description=__doc__,
                                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return run_eval(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"fusevlm eval: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
