"""The package's layering: stages -> artefacts and science -> checkpoint -> families.

Every import of every module (function-level ones included) is read from the source, so
the rule holds for lazy imports too. Run ``python -m pytest tests/test_layering.py -s``
to print the import graph between packages.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "moetopo"

# Lowest first; a package may import its own layer's base packages and any lower layer.
LAYERS = [
    ("base", {"errors", "families"}),
    ("checkpoint", {"checkpoint"}),
    ("science", {"routing", "geometry", "diff", "topology", "stats", "collaboration"}),
    ("methods", {"compression"}),  # built on routing and topology together
    ("artefacts", {"artefacts"}),
    ("stages", {"stages", "report", "pipeline"}),
    ("tools", {"inspect", "capture", "end_to_end", "bench", "zoo", "fixtures", "__main__"}),
]
RANK = {package: rank for rank, (_, packages) in enumerate(LAYERS) for package in packages}
# Within a layer, packages stay independent of each other; these edges are the exceptions.
SIDEWAYS = {
    ("base", "families", "errors"),
    ("tools", "zoo", "capture"),
    ("tools", "end_to_end", "capture"),  # the model's own tokenizer
    ("tools", "end_to_end", "zoo"),  # the zoo's held-out windows
    ("tools", "bench", "fixtures"),
    ("tools", "__main__", "inspect"),
}
# The stage modules, one per rule: none imports another.
STAGE_MODULES = "stages."


def package_of(module: str) -> str:
    """moetopo.checkpoint.reader -> checkpoint; moetopo (the version) -> base."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"


def import_edges() -> dict[str, set[str]]:
    """Module -> the moetopo modules it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            edges[module] |= {n for n in names if n == "moetopo" or n.startswith("moetopo.")}
    return edges


def package_graph() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> the module-level imports behind the edge."""
    graph: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, imported in import_edges().items():
        for target in sorted(imported):
            a, b = package_of(module), package_of(target)
            if a != b:
                graph[a, b].append(f"{module} -> {target}")
    return graph


def test_print_the_package_graph_and_refuse_upward_edges():
    graph = package_graph()
    lines, upward = [], []
    for (a, b), via in sorted(graph.items(), key=lambda kv: (RANK[kv[0][0]], kv[0])):
        ok = RANK[b] < RANK[a] or (LAYERS[RANK[a]][0], a, b) in SIDEWAYS
        lines.append(f"{'  ' if ok else '!!'} {a:>10} -> {b:<10} ({len(via)} imports)")
        if not ok:
            upward += via
    print("\n".join(lines))
    assert set(RANK) >= {package_of(m) for m in import_edges()}, "a package has no layer"
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_stage_imports_another_stage():
    crossing = [
        f"{module} -> {target}"
        for module, imported in import_edges().items()
        if module.startswith("moetopo." + STAGE_MODULES)
        for target in imported
        if target.startswith("moetopo." + STAGE_MODULES) and target != module
    ]
    assert not crossing, crossing


def test_the_check_sees_an_upward_edge(tmp_path, monkeypatch):
    """The graph is read from the source: a planted checkpoint -> stages import shows."""
    fake = tmp_path / "moetopo"
    for sub in ("checkpoint", "stages"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "checkpoint" / "bad.py").write_text("from moetopo.stages import run\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges = package_graph()
    assert edges[("checkpoint", "stages")] == ["moetopo.checkpoint.bad -> moetopo.stages"]
    assert RANK["stages"] > RANK["checkpoint"]


def test_no_script_shadows_a_module_a_dependency_may_import():
    """Snakemake runs a script with its folder on sys.path: a script named like a module
    that a dependency imports when present (pandas tries ``bottleneck``) replaces it."""
    from importlib.metadata import packages_distributions

    from pandas.compat._optional import VERSIONS

    taken = set(sys.stdlib_module_names) | set(VERSIONS) | set(packages_distributions())
    scripts = sorted((PACKAGE.parents[1] / "workflow" / "scripts").glob("*.py"))
    assert "bottleneck" in VERSIONS and len(scripts) > 10
    assert not [s.name for s in scripts if s.stem in taken]
