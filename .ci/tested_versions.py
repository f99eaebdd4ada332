"""The versions a CI run resolved and passed with, as a Markdown block written into the README.

`.ci/run` calls this after the suite passes, in the fresh virtual environment it made: the block then says which
Python and which releases of fusevlm's dependencies were last tested together. The block sits between two marker
comments in README.md and is replaced whole; the rest of the file is left as it is.

    python .ci/tested_versions.py --extras dev,serve              # print the block
    python .ci/tested_versions.py --extras dev,serve --update README.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

BEGIN = "<!-- tested-versions:begin (written by .ci/tested_versions.py; do not edit by hand) -->"
END = "<!-- tested-versions:end -->"
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(distribution: str = "fusevlm") -> list[tuple[str, str, str]]:
    """(name, what pyproject asks for, extra or '') for each direct requirement, in pyproject's order."""
    rows = []
    for line in metadata.requires(distribution) or []:
        spec, _, marker = line.partition(";")
        name = NAME.match(spec).group(1)
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        # Lower bound first, as pyproject writes it (the metadata sorts "<" before ">=").
        wanted = ",".join(sorted(spec[len(name):].strip().split(","), key=lambda s: not s.startswith(">")))
        rows.append((name, wanted or "any", extra.group(1) if extra else ""))
    return rows


def installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def block(extras: set[str], today: datetime.date | None = None) -> str:
    """The table of the base requirements and of the ``extras`` the run installed; other extras are named only."""
    today = today or datetime.date.today()
    python = f"{platform.python_implementation()} {platform.python_version()}"
    lines = [
        BEGIN,
        f"Last passed `.ci/run` on {today.isoformat()}: {python}, {platform.system()} {platform.machine()}, "
        "in a virtual environment resolved afresh from `pyproject.toml`.",
        "",
        "| package | pyproject asks for | resolved and tested |",
        "| --- | --- | --- |",
    ]
    untested = []
    for name, wanted, extra in requirements():
        if extra and extra not in extras:
            untested.append(extra)
            continue
        where = f" (`{extra}`)" if extra else ""
        lines.append(f"| {name}{where} | `{wanted}` | {installed(name)} |")
    if untested:
        names = ", ".join(f"`{e}`" for e in dict.fromkeys(untested))
        lines += ["", f"Extras CI does not install, so not tested here: {names}."]
    lines.append(END)
    return "\n".join(lines)


def update(readme: Path, text: str) -> bool:
    """Replace the marked block in ``readme``; True when its content changed. Refuses a file without markers."""
    old = readme.read_text()
    start, end = old.find(BEGIN), old.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no tested-versions block (the lines {BEGIN!r} ... {END!r})")
    new = old[:start] + text + old[end + len(END):]
    readme.write_text(new)
    return new != old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="", help="the extras this environment installed, comma-separated")
    parser.add_argument("--update", type=Path, metavar="README", help="rewrite the block in this file")
    args = parser.parse_args(argv)
    text = block({e for e in args.extras.split(",") if e})
    print(text)
    if args.update:
        changed = update(args.update, text)
        print(f"{args.update}: tested versions {'updated' if changed else 'unchanged'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
