"""``fusevlm`` command line: each subcommand parses its arguments and calls into the package."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

Runner = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Runner]]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: the decorated function adds its arguments and returns the runner."""

    def wrap(add_arguments: Callable[[argparse.ArgumentParser], Runner]):
        COMMANDS[name] = (help_text, add_arguments)
        return add_arguments

    return wrap


def _vision_argument(value: str):
    """``--vision a,b`` means a fused encoder; a JSON object is an explicit spec."""
    if value.lstrip().startswith(("{", "[")):
        return json.loads(value)
    parts = [p for p in value.split(",") if p]
    return parts if len(parts) > 1 else parts[0]


@command("init", "compose a model from a vision encoder, a projector and an LLM, and save it")
def _init(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--vision",
        required=True,
        type=_vision_argument,
        help="registry name, hub name or folder; 'a,b' fuses encoders; or a JSON spec",
    )
    parser.add_argument(
        "--projector",
        default="mlp2x_gelu",
        help="identity | linear | mlp{N}x_gelu | cross_attn | pixel_shuffle, or a JSON object",
    )
    parser.add_argument("--llm", required=True, help="hub name or folder of any causal LM")
    parser.add_argument(
        "--projector-weights", default=None, help="a projector weights file to load (optional)"
    )
    parser.add_argument("--out", required=True, type=Path, help="the model folder to write")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the LLM's)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the LLM checkpoint's own code"
    )

    def run(args: argparse.Namespace) -> int:
        from .models.builder import format_parameter_table, load_mixed_pretrained_model, parameter_table

        projector = json.loads(args.projector) if args.projector.lstrip().startswith("{") else args.projector
        model, processor = load_mixed_pretrained_model(
            args.llm,
            args.vision,
            projector,
            args.projector_weights,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
        )
        model.save_pretrained(args.out)
        processor.save_pretrained(args.out)
        print(format_parameter_table(parameter_table(model)))
        print(f"image tokens per image: {model.config.image_seq_length}")
        print(f"wrote {args.out}")
        return 0

    return run


@command("demo", "train a tiny VLM from scratch on CPU on synthetic data and show it sees (a few minutes)")
def _demo(parser: argparse.ArgumentParser):
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where data, model and report go")
    parser.add_argument("--fast", action="store_true", help="smaller data and model (about a minute; for tests)")

    def run(args: argparse.Namespace) -> int:
        from .demo import run_demo

        run_demo(args.out, fast=args.fast)
        return 0

    return run


@command("plan", "parameters, image tokens and memory per GPU of a recipe, offline: fusevlm plan [--gpus N] RECIPE.yaml")
def _plan(parser: argparse.ArgumentParser):
    from .plan import add_arguments, run

    add_arguments(parser)
    return run


@command("train", "run one training stage from a recipe: fusevlm train RECIPE.yaml [key=value ...]")
def _train(parser: argparse.ArgumentParser):
    parser.add_argument("recipe", type=Path, help="a YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. learning_rate=2e-5 model.llm=/models/x")

    def run(args: argparse.Namespace) -> int:
        from .train.recipe import load_recipe
        from .train.run import train

        output = train(load_recipe(args.recipe, args.overrides))
        print(f"model folder: {output}")
        return 0

    return run


@command("convert", "convert a public dataset release into fusevlm's conversation JSON")
def _convert(parser: argparse.ArgumentParser):
    from .data.convert.__main__ import add_arguments
    from .data.convert.__main__ import run as run_convert

    add_arguments(parser)
    return run_convert


@command("eval", "answer a benchmark with a model, write the official answers file and score it")
def _eval(parser: argparse.ArgumentParser):
    from .eval.cli import add_eval_arguments, run_eval

    add_eval_arguments(parser)
    return run_eval


@command("serve", "serve a model over an OpenAI-compatible HTTP API (127.0.0.1 unless told otherwise)")
def _serve(parser: argparse.ArgumentParser):
    from .serve.server import add_arguments, run

    add_arguments(parser)
    return run


@command("chat", "chat with a model in the terminal (/image PATH, /reset, /quit)")
def _chat(parser: argparse.ArgumentParser):
    from .serve.chat import add_arguments, run

    add_arguments(parser)
    return run


@command("web", "a Gradio page to upload an image and chat with a model (127.0.0.1 unless told otherwise)")
def _web(parser: argparse.ArgumentParser):
    from .serve.web import add_arguments, run

    add_arguments(parser)
    return run


@command("merge", "fold a LoRA adapter (and its trained projector) into its base model: one folder")
def _merge(parser: argparse.ArgumentParser):
    from .serve.merge import add_arguments, run

    add_arguments(parser)
    return run


@command("export", "export a model to another format (hf-llava: transformers' LlavaForConditionalGeneration)")
def _export(parser: argparse.ArgumentParser):
    from .export import add_arguments, run_export

    add_arguments(parser)
    return run_export


@command("import", "import a model from another format (hf-llava) as a fusevlm model folder")
def _import(parser: argparse.ArgumentParser):
    from .export import add_arguments, run_import

    add_arguments(parser)
    return run_import


@command("score", "score an answers file in a benchmark's submission format, with no model loaded")
def _score(parser: argparse.ArgumentParser):
    parser.add_argument("--benchmark", required=True, help="vqav2 | textvqa | vizwiz | gqa | mmbench | mmbench_cn | ...")
    parser.add_argument("--data", required=True, type=Path, help="the benchmark's official question/annotation file")
    parser.add_argument("--answers", required=True, type=Path, help="the answers file to score")
    parser.add_argument("--rules", default="official", choices=("official", "evalai"),
                        help="answer normalisation for VQAv2/TextVQA/VizWiz")
    parser.add_argument("--strict", action="store_true", help="fail if any question has no answer")
    parser.add_argument("--out", type=Path, default=None, help="also write scores.json and scores.md here")

    def run(args: argparse.Namespace) -> int:
        from .eval.scoring import format_table, score

        result = score(args.benchmark, args.data, args.answers, rules=args.rules, strict=args.strict)
        table = format_table([result])
        print(table)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "scores.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
            (args.out / "scores.md").write_text(table + "\n")
        return 0

    return run


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    parser = argparse.ArgumentParser(prog="fusevlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {}
    for name, (help_text, add_arguments) in COMMANDS.items():
        runners[name] = add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser, runners


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    try:
        return runners[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"fusevlm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
