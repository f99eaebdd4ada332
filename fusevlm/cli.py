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
        help="registry name, hub name or folder (the seed's Qwen-VL-visual/ too); 'a,b' fuses encoders; or a JSON spec",
    )
    parser.add_argument(
        "--projector",
        default="mlp2x_gelu",
        help="identity | linear | mlp{N}x_gelu | cross_attn | pixel_shuffle, or a JSON object",
    )
    parser.add_argument("--llm", required=True, help="hub name or folder of any causal LM (Qwen v1 too), or a LoRA folder")
    parser.add_argument("--llm-base", default=None, help="the LLM a LoRA output folder given as --llm adapts")
    parser.add_argument(
        "--projector-weights", default=None, help="a projector weights file to load (optional)"
    )
    parser.add_argument("--template", default=None,
                        help="a built-in chat template (default: codefuse_qwen for the seed's Qwen-VL-visual/, "
                             "else the tokenizer's own)")
    parser.add_argument("--out", required=True, type=Path, help="the model folder to write")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the LLM's)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the LLM checkpoint's own code"
    )

    def run(args: argparse.Namespace) -> int:
        from .models.builder import format_parameter_table, parameter_table
        from .models.seed import load_mixed_pretrained_model
        from .processing import FuseVLMProcessor

        projector = json.loads(args.projector) if args.projector.lstrip().startswith("{") else args.projector
        tokenizer, model, image_processor, _ = load_mixed_pretrained_model(
            args.llm, args.llm_base, None, args.vision, projector, args.projector_weights,
            device_map=None, dtype=args.dtype, trust_remote_code=args.trust_remote_code, chat_template=args.template,
        )
        processor = FuseVLMProcessor(image_processor, tokenizer, model.config.image_seq_length, model.config.image_token)
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


@command("data", "check a recipe's data ahead of a run: fusevlm data check RECIPE.yaml [--out report.json]")
def _data(parser: argparse.ArgumentParser):
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="every record and every image (opened and decoded), in parallel")
    check.add_argument("recipe", type=Path, help="a YAML recipe: its data entries are checked")
    check.add_argument("overrides", nargs="*", help="recipe overrides, as for fusevlm train")
    check.add_argument("--num-proc", type=int, default=None, help="processes (default: the CPU count)")
    check.add_argument("--out", type=Path, default=None, help="write the report here (data_report.json's format)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from .data.check import check_records
        from .train.recipe import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        report = check_records(recipe.data, num_proc=args.num_proc, progress=not args.no_progress)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            report.save(args.out)
        print(report.summary())
        return 1 if report.skipped else 0

    return run


@command("score", "score an answers file in a benchmark's submission format, with no model loaded")
def _score(parser: argparse.ArgumentParser):
    parser.add_argument("--benchmark", required=True, help="vqav2 | textvqa | vizwiz | gqa | mmbench | mmbench_cn | ...")
    parser.add_argument("--data", required=True, type=Path, help="the benchmark's official question/annotation file")
    parser.add_argument("--answers", required=True, type=Path, help="the answers file to score")
    parser.add_argument("--rules", default="official", choices=("official", "evalai", "verbose"),
                        help="evalai: EvalAI's answer normalisation for VQAv2/TextVQA/VizWiz; verbose: MMBench choice "
                        "extraction with the article rule VLMEvalKit applies under VERBOSE")
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


@command("convert-llm", "convert a remote-code LLM checkpoint into a transformers-native folder: "
                        "fusevlm convert-llm qwen-v1 IN OUT")
def _convert_llm(parser: argparse.ArgumentParser):
    parser.add_argument("format", choices=("qwen-v1",),
                        help="qwen-v1: Qwen-7B / Qwen-14B (model_type 'qwen') -> Qwen2 (exact up to seq_length tokens)")
    parser.add_argument("input", type=Path, help="the checkpoint folder (config.json, weights, qwen.tiktoken)")
    parser.add_argument("output", type=Path, help="the folder to write (new or empty)")

    def run(args: argparse.Namespace) -> int:
        from .models.qwen_v1 import convert_qwen_v1

        print(f"wrote {convert_qwen_v1(args.input, args.output)}")
        return 0

    return run


# Subcommands whose parser and runner live with the code they run: (help, module, add-arguments, runner).
DELEGATED: dict[str, tuple[str, str, str, str]] = {
    "plan": ("parameters, image tokens and memory per GPU of a recipe, offline: fusevlm plan [--gpus N] RECIPE.yaml",
             "fusevlm.plan", "add_arguments", "run"),
    "convert": ("convert a public dataset release into fusevlm's conversation JSON",
                "fusevlm.data.convert.__main__", "add_arguments", "run"),
    "eval": ("answer a benchmark with a model, write the official answers file and score it",
             "fusevlm.eval.cli", "add_eval_arguments", "run_eval"),
    "serve": ("serve a model over an OpenAI-compatible HTTP API (127.0.0.1 unless told otherwise)",
              "fusevlm.serve.server", "add_arguments", "run"),
    "chat": ("chat with a model in the terminal (/image PATH, /reset, /quit)", "fusevlm.serve.chat", "add_arguments", "run"),
    "web": ("a Gradio page to upload an image and chat with a model (127.0.0.1 unless told otherwise)",
            "fusevlm.serve.web", "add_arguments", "run"),
    "merge": ("fold a LoRA adapter (and its trained projector) into its base model: one folder",
              "fusevlm.serve.merge", "add_arguments", "run"),
    "export": ("export a model to another format (hf-llava: transformers' LlavaForConditionalGeneration; "
               "qwen-vl: a Qwen-VL-Chat folder)", "fusevlm.export", "add_arguments", "run_export"),
    "import": ("import a model from another format (hf-llava, qwen-vl) as a fusevlm model folder",
               "fusevlm.export", "add_arguments", "run_import"),
}


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    """Every subcommand is listed; only ``command``'s arguments are built, since building them imports its code
    (and optional packages such as gradio or fastapi that other commands do not need)."""
    parser = argparse.ArgumentParser(prog="fusevlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    runners: dict[str, Runner] = {}
    helps = {**{name: h for name, (h, _) in COMMANDS.items()}, **{name: d[0] for name, d in DELEGATED.items()}}
    for name, help_text in helps.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            runners[name] = COMMANDS[name][1](subparser) if name in COMMANDS else _delegated(name, subparser)
    return parser, runners


def _delegated(name: str, parser: argparse.ArgumentParser) -> Runner:
    import importlib

    _, module_name, add_name, run_name = DELEGATED[name]
    module = importlib.import_module(module_name)
    getattr(module, add_name)(parser)
    return getattr(module, run_name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, runners = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    try:
        return runners[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"fusevlm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
