"""``python -m moetopo.zoo``: train and save the zoo (needs the ``zoo`` extra)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from moetopo.zoo.corpus import CorpusLimits
from moetopo.zoo.specs import TUNED, ZOO, quick_zoo, with_steps

QUICK_LIMITS = CorpusLimits(code_bytes=300_000, prose_bytes=150_000)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moetopo.zoo", description=__doc__)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="repository root (TSV paths are relative to it)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="zoo directory (default ROOT/resources/zoo)"
    )
    sheets_help = "where models.tsv, pairs.tsv go (default ROOT/config; none if --quick)"
    parser.add_argument("--config-dir", type=Path, default=None, help=sheets_help)
    parser.add_argument("--no-sheets", action="store_true", help="do not write the TSV sheets")
    parser.add_argument(
        "--quick", action="store_true", help="one tiny model per family, small corpus"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="override every model's training steps"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: tiny models gain little)"
    )
    parser.add_argument(
        "--study",
        action="store_true",
        help="build the designed study instead (default out ROOT/build/study, its sheets "
        "there too; run the pipeline on it with --configfile config/config.yaml "
        "config/study.yaml)",
    )
    parser.add_argument(
        "--toy",
        action="store_true",
        help="train the superposition study's toy MoE grid instead (feature sparsity x "
        "k/E; default out ROOT/resources/toy, its models.tsv there; run the pipeline on it "
        "with --configfile config/config.yaml config/toy.yaml)",
    )
    parser.add_argument(
        "--recapture",
        action="store_true",
        help="only capture the built zoo's routing again (router logits and inputs)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="ID",
        help="train only these base models into the built zoo, keeping the others as built",
    )
    args = parser.parse_args(argv)

    try:
        from moetopo.zoo.build import BuildOptions, build, recapture, summary
    except ImportError as exc:  # torch / transformers missing
        print(
            f"moetopo.zoo needs the 'zoo' extra (pip install 'moetopo[zoo]'): {exc}",
            file=sys.stderr,
        )
        return 1
    root = args.root
    if args.toy:
        from moetopo.zoo.toy import build_toy, toy_grid

        recipe = {"steps": args.steps} if args.steps else {}
        build_toy(toy_grid(**recipe), args.out or root / "resources" / "toy", root)
        return 0
    if args.study:
        from moetopo.zoo.build import build_study
        from moetopo.zoo.study import study_points

        out = args.out or root / "build" / "study"
        opts = BuildOptions(out_dir=out, root=root, config_dir=args.config_dir or out,
                            threads=args.threads)  # fmt: skip
        manifest = build_study(study_points(), opts)
        print(summary(manifest))
        return 0
    if args.recapture:
        recapture(args.out or root / "resources" / "zoo")
        return 0
    if args.only:
        from moetopo.zoo.build import add_models

        unknown = sorted(set(args.only) - {s.id for s in ZOO})
        if unknown:
            print(f"--only: no base model {', '.join(unknown)} in the zoo", file=sys.stderr)
            return 1
        opts = BuildOptions(out_dir=args.out or root / "resources" / "zoo", root=root,
                            config_dir=args.config_dir or root / "config",
                            threads=args.threads)  # fmt: skip
        order = [s.id for s in ZOO] + [t.id for t in TUNED]
        manifest = add_models(tuple(s for s in ZOO if s.id in args.only), order, opts)
        print(summary(manifest))
        return 0
    if args.quick:
        specs, tuned = quick_zoo(args.steps or 10)
        out = args.out or root / "build" / "zoo-quick"
        config_dir = args.config_dir
    else:
        specs, tuned = (with_steps(ZOO, args.steps) if args.steps else ZOO), TUNED
        out = args.out or root / "resources" / "zoo"
        config_dir = args.config_dir or root / "config"
    if args.steps:
        tuned = tuple(replace(t, steps=max(1, args.steps // 2)) for t in tuned)
    opts = BuildOptions(
        out_dir=out,
        root=root,
        config_dir=None if args.no_sheets else config_dir,
        threads=args.threads,
        limits=QUICK_LIMITS if args.quick else None,
    )
    manifest = build(specs, tuned, opts)
    print(summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
