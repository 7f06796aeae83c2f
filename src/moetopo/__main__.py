"""Command line: ``python -m moetopo inspect MODEL`` and ``python -m moetopo prune MODEL
SELECTION OUT`` (the pipeline itself runs under Snakemake)."""

from __future__ import annotations

import argparse
import json
import sys

from moetopo.errors import MoetopoError
from moetopo.inspect import describe, inspect_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moetopo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="what a checkpoint is, from its headers alone")
    inspect.add_argument(
        "model", help="model directory, .safetensors or .gguf file, hf://ORG/NAME or https:// URL"
    )
    inspect.add_argument("--family", help="force a family instead of detecting it")
    inspect.add_argument("--json", action="store_true", help="print model.json-style JSON")
    prune = commands.add_parser(
        "prune", help="write the checkpoint a selection (compression_selection.json) describes"
    )
    prune.add_argument("model", help="model directory")
    prune.add_argument("selection", help="a selection JSON the compression stage wrote")
    prune.add_argument("out", help="new model directory (must not exist)")
    args = parser.parse_args(argv)
    try:
        if args.command == "prune":
            from moetopo.compression.export import write_pruned_checkpoint

            written = write_pruned_checkpoint(args.model, args.out, args.selection)
            print(json.dumps(written, indent=2, default=str))
            return 0
        summary = inspect_model(args.model, family=args.family)
    except MoetopoError as exc:
        print(f"moetopo: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str) if args.json else describe(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
