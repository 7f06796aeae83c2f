"""Everything the report shows, read from the artefacts into one typed bundle.

The report computes no statistic of its own: it reads these tables and prints
them, so a number in the report is a number in a Parquet file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from moetopo.artefacts import COLLABORATION_ARTEFACTS, read_table

MODEL_TABLES = (
    "redundancy",
    "expert_distances",
    "persistence",
    "sheaf",
    "hodge",
    "hodgecover",
    "routing_agreement",
)
PAIR_TABLES = ("scaffold", "crossref")
# Present where the run evaluated compression (a router-only run does not), and where it
# measured superposition.
OPTIONAL_MODEL_TABLES = ("compression", "compression_end_to_end", "superposition")
# Present where the run built collaboration matrices.
OPTIONAL_MODEL_TABLES += COLLABORATION_ARTEFACTS
COMPRESSION_STUDY = ("compression_methods", "compression_layers", "compression_topology")
DESIGN_STUDY = ("study_seeds", "study_models", "study_effects")  # where the sheet carries a design


@dataclass(frozen=True)
class ModelData:
    name: str
    path: str  # as the models sheet gives it
    summary: dict  # model.json
    tables: dict[str, pd.DataFrame]
    versions: dict[str, str]  # artefact -> moetopo version that wrote it
    warnings: list[str]

    def __getitem__(self, table: str) -> pd.DataFrame:
        return self.tables[table]


@dataclass(frozen=True)
class PairData:
    pair: str
    base: str
    tuned: str
    tables: dict[str, pd.DataFrame]
    meta: dict[str, dict]  # artefact -> its metadata (params, pair, warnings)
    warnings: list[str]

    def __getitem__(self, table: str) -> pd.DataFrame:
        return self.tables[table]


@dataclass(frozen=True)
class ReportData:
    models: list[ModelData]
    pairs: list[PairData]
    stats_models: pd.DataFrame
    conjecture: pd.DataFrame  # the tests of the primary score
    conjecture_params: dict
    pairs_summary: pd.DataFrame | None
    config: dict
    settings: dict = field(default_factory=dict)  # config["report"] with defaults
    compression: dict[str, pd.DataFrame] = field(default_factory=dict)  # COMPRESSION_STUDY
    other_scores: pd.DataFrame | None = None  # the tests of the other scores
    design: dict[str, pd.DataFrame] = field(default_factory=dict)  # DESIGN_STUDY

    @property
    def primary_score(self) -> str:
        return self.conjecture_params.get("primary_score", "score")

    def score_is_better_higher(self, score: str | None = None) -> bool:
        """Whether a higher value of ``score`` (the primary score by default) is better."""
        score = score or self.primary_score
        recorded = self.conjecture_params.get("directions", {})  # as the stage tested it
        return bool(recorded.get(score, self.conjecture_params.get("higher_is_better", True)))


def model_files(root: str | Path, model: str) -> dict[str, Path]:
    """Where a model's artefacts live under a results directory (the workflow's layout)."""
    base = Path(root) / model
    files = {"summary": base / "model.json"} | {t: base / f"{t}.parquet" for t in MODEL_TABLES}
    optional = {t: base / f"{t}.parquet" for t in OPTIONAL_MODEL_TABLES}
    return files | {t: path for t, path in optional.items() if path.exists()}


def pair_files(root: str | Path, pair: str) -> dict[str, Path]:
    base = Path(root) / "pairs" / pair
    return {t: base / f"{t}.parquet" for t in PAIR_TABLES}


def study_files(root: str | Path, with_pairs: bool) -> dict[str, Path]:
    root = Path(root)
    files = {
        "stats_models": root / "stats" / "models.parquet",
        "conjecture": root / "stats" / "conjecture.parquet",
    }
    if with_pairs:
        files["pairs_summary"] = root / "pairs" / "summary.parquet"
    for table in (*COMPRESSION_STUDY, *DESIGN_STUDY):
        if (root / "stats" / f"{table}.parquet").exists():
            files[table] = root / "stats" / f"{table}.parquet"
    return files


def load_model(name: str, path: str, files: Mapping[str, str | Path]) -> ModelData:
    summary = json.loads(Path(files["summary"]).read_text())
    tables, versions, warnings = {}, {}, list(summary.get("warnings", []))
    for table in (*MODEL_TABLES, *(t for t in OPTIONAL_MODEL_TABLES if t in files)):
        frame, meta = read_table(files[table])
        tables[table] = frame
        versions[table] = meta.get("version", "")
        warnings += [f"{table}: {w}" for w in meta.get("warnings", [])]
    return ModelData(name, path, summary, tables, versions, list(dict.fromkeys(warnings)))


def load_pair(base: str, tuned: str, files: Mapping[str, str | Path]) -> PairData:
    tables, meta, warnings = {}, {}, []
    for table in PAIR_TABLES:
        tables[table], meta[table] = read_table(files[table])
        warnings += [f"{table}: {w}" for w in meta[table].get("warnings", [])]
    return PairData(f"{base}--{tuned}", base, tuned, tables, meta, warnings)


def load_report(
    models: Sequence[tuple[str, str, Mapping[str, str | Path]]],
    pairs: Sequence[tuple[str, str, Mapping[str, str | Path]]],
    study: Mapping[str, str | Path],
    config: dict,
) -> ReportData:
    """Read every artefact the report shows.

    ``models`` are (name, sheet path, files as :func:`model_files`), ``pairs`` are
    (base, tuned, files as :func:`pair_files`), ``study`` as :func:`study_files`;
    ``config`` is the workflow's config, printed as provenance.
    """
    stats_models, _ = read_table(study["stats_models"])
    conjecture, conjecture_meta = read_table(study["conjecture"])
    summary = read_table(study["pairs_summary"])[0] if "pairs_summary" in study else None
    params = conjecture_meta.get("params", {})
    primary = params.get("primary_score", "score")
    return ReportData(
        models=[load_model(*m) for m in models],
        pairs=[load_pair(*p) for p in pairs],
        stats_models=stats_models,
        conjecture=conjecture[conjecture.score == primary].reset_index(drop=True),
        conjecture_params=params,
        pairs_summary=summary,
        config=config,
        settings=report_settings(config),
        compression={t: read_table(study[t])[0] for t in COMPRESSION_STUDY if t in study},
        other_scores=conjecture[conjecture.score != primary].reset_index(drop=True),
        design={t: read_table(study[t])[0] for t in DESIGN_STUDY if t in study},
    )


DEFAULTS = {
    "threshold_spec": "r0.5",
    "heatmap_layers": 2,
}


def report_settings(config: Mapping) -> dict:
    """config["report"] over the defaults (the schema fills them in a workflow run)."""
    return DEFAULTS | dict(config.get("report", {}))
