"""``python -m moetopo.bench {gates,geometry,topology,diff,scale,compression,remote} [options]``."""

from __future__ import annotations

import importlib
import sys

BENCHES = ("gates", "geometry", "topology", "diff", "scale", "compression", "remote")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m moetopo.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"moetopo.bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
