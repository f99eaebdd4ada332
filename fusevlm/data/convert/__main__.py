"""Command line: `fusevlm convert SOURCE --input PATH [--input PATH ...] --output data.json [options]`.

Also runs as `python -m fusevlm.data.convert SOURCE ...`. Prints the stats as JSON; exits 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import CONVERTERS, convert
from .common import LANGS
from .ocr_vqa import SPLITS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The convert command's arguments, for embedding in another parser (e.g. a `convert` subcommand)."""
    parser.add_argument("source", choices=sorted(CONVERTERS), help="which dataset the inputs are")
    parser.add_argument("--input", "-i", dest="inputs", action="extend", nargs="+", required=True,
                        metavar="PATH", help="input file(s) or folder(s) in the dataset's release format")
    parser.add_argument("--output", "-o", required=True, help="the conversation JSON to write")
    parser.add_argument("--num-samples", type=int, help="down- or up-sample to this many records")
    parser.add_argument("--seed", type=int, default=0, help="seed for templates and sampling (default 0)")
    parser.add_argument("--image-root", help="skip records whose image file is missing under this folder")
    parser.add_argument("--image-dir", help="synthdog: folder for the images (default <output stem>_images/)")
    parser.add_argument("--lang", choices=LANGS, help="language of the instructions (synthdog: detected)")
    parser.add_argument("--split", choices=tuple(SPLITS), help="ocr_vqa: keep one split")
    parser.add_argument("--image-name", help="cc3m TSV / sbu: image file-name rule, a str.format pattern with "
                                             "index, url_name, stem (default {index:09d}.jpg)")
    parser.add_argument("--max-turns", type=int, help="vg_vqa / ocr_vqa: most QA turns per conversation (10)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--to", choices=("json", "webdataset"), default="json",
                        help="webdataset: --output is a folder of .tar shards (records and image bytes) to stream")
    parser.add_argument("--shard-size", type=int, default=1000, help="records per WebDataset shard (default 1000)")


def run(args: argparse.Namespace) -> int:
    try:
        output = Path(args.output) / "records.json" if args.to == "webdataset" else Path(args.output)
        stats = convert(
            args.source, args.inputs, output, num_samples=args.num_samples, seed=args.seed,
            image_root=args.image_root, image_dir=args.image_dir, lang=args.lang, split=args.split,
            image_name=args.image_name, max_turns=args.max_turns, progress=not args.no_progress,
        )
        if args.to == "webdataset":
            from ..streaming import write_webdataset

            shards = write_webdataset(output, args.output, image_root=args.image_root or stats.get("image_dir"),
                                      shard_size=args.shard_size)
            output.unlink()
            stats["output"] = str(args.output)
            stats["shards"] = len(shards)
    except ValueError as e:  # ConvertError included: a malformed file, named with its record and field
        print(f"fusevlm convert: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:  # accept `convert SOURCE ...` as well as `SOURCE ...`
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="fusevlm convert",
                                     description="Convert a dataset's release files into conversation JSON.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
