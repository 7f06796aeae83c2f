"""The config has one name and one default per setting: the schema's.

Code that takes a setting as a keyword (for tests and library use) may keep a default
only if it equals the schema's; config.yaml shows the defaults and may differ only where
the demo deliberately chooses otherwise. Source names are checked at parse time.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from moetopo.compression.evaluate import CompressionParams
from moetopo.diff.rows import RowMeasure
from moetopo.errors import MoetopoError
from moetopo.geometry.sources import SOURCES
from moetopo.geometry.superposition import Thresholds
from moetopo.pipeline.config import ENGINEERING_SECTIONS, check_config, result_params
from moetopo.report.data import DEFAULTS as REPORT_DEFAULTS
from moetopo.stages.clusters import cluster_tables
from moetopo.stages.cohomology import CohomologySettings
from moetopo.stages.collaboration import CollaborationSettings
from moetopo.stages.crossref import crossref_table
from moetopo.stages.expert_geometry import layer_distances
from moetopo.stages.pairs_summary import pairs_summary
from moetopo.stages.scaffold import scaffold_table
from moetopo.stages.superposition import superposition_tables
from moetopo.topology.layer import TopologyParams

from conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# config.yaml's deliberate departures from the defaults: the demo's scores are losses.
DEMO_CHOICES = {("conjecture", "higher_is_better"): False}


def schema_defaults() -> dict:
    schema = yaml.safe_load(SCHEMA.read_text())
    return {
        section: {key: spec["default"] for key, spec in body.get("properties", {}).items()}
        for section, body in schema["properties"].items()
        if body.get("type") == "object"
    }


def validated(**overrides) -> dict:
    config = {"models": "config/models.tsv"}
    for path, value in overrides.items():
        section, key = path.split("__")
        config.setdefault(section, {})[key] = value
    validate(config, str(SCHEMA))
    return config


def keyword_defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_config_yaml_shows_exactly_the_schema_defaults():
    shown = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    defaults = schema_defaults()
    assert set(shown) - {"models", "pairs"} == set(defaults)
    for section, values in defaults.items():
        expected = {k: DEMO_CHOICES.get((section, k), v) for k, v in values.items()}
        assert shown[section] == expected, section


# (code default, schema section, schema key)
CODE_DEFAULTS = [
    *((TopologyParams, "cohomology", key) for key in (
        "maxdim", "significance_level", "null_draws", "bootstrap_draws", "bootstrap_max_experts",
        "stalk_dim", "rtol", "n_eigenvalues", "hodge_signal", "n_critical_edges", "max_triangles",
    )),
    (TopologyParams, "cohomology", "epsilon_quantiles"),
    (TopologyParams, "cohomology", "cover_quantile"),
    (TopologyParams, "cohomology", "keep_fractions"),
    *((CohomologySettings, "cohomology", key) for key in (
        "sheaf_stalks", "sheaf_rows", "groups_threshold", "merge_barriers",
    )),
    (CohomologySettings, "probe", "function_tokens"),
    (CohomologySettings, "probe", "seed"),
    (TopologyParams, "probe", "seed"),
    (layer_distances, "probe", "function_tokens"),
    (layer_distances, "probe", "seed"),
    (cluster_tables, "clusters", "linkage"),
    (scaffold_table, "scaffold", "q_min"),
    (scaffold_table, "scaffold", "o_min"),
    (scaffold_table, "scaffold", "k_max"),
    (crossref_table, "crossref", "source"),
    (crossref_table, "crossref", "threshold_spec"),
    (crossref_table, "crossref", "min_redundancy"),
    *((pairs_summary, "pairs_summary", key) for key in (
        "depth_bins", "confidence_level", "n_resamples", "seed",
    )),
    *((CompressionParams, "compression", key) for key in (
        "methods", "keep_fractions", "tokens", "random_draws", "neighbours", "max_triangles",
        "seed",
    )),
    *((Thresholds, "superposition", key) for key in (
        "ignored_norm", "dedicated_score", "antipodal_cosine",
    )),
    (superposition_tables, "superposition", "basis"),
    *((CollaborationSettings, "collaboration", key) for key in (
        "sources", "router_temperature", "neighbours", "permutations", "seed",
    )),
]  # fmt: skip


@pytest.mark.parametrize(
    "owner, section, key", CODE_DEFAULTS, ids=lambda x: getattr(x, "__name__", str(x))
)
def test_code_defaults_equal_the_schema_defaults(owner, section, key):
    found = field_defaults(owner) if dataclasses.is_dataclass(owner) else keyword_defaults(owner)
    value = found[key]
    expected = schema_defaults()[section][key]
    assert (list(value) if isinstance(value, tuple) else value) == expected


def test_row_measure_and_report_defaults_equal_the_schema_defaults():
    defaults = schema_defaults()
    measure = field_defaults(RowMeasure)
    diff = defaults["attention_diff"]
    assert (measure["measure"], measure["threshold"], measure["kind"]) == (
        diff["measure"],
        diff["threshold"],
        diff["threshold_kind"],
    )
    assert defaults["report"] == REPORT_DEFAULTS


def test_chunk_bytes_default_is_the_streaming_default():
    chunk_mb = schema_defaults()["streaming"]["chunk_mb"]
    assert field_defaults(CohomologySettings)["chunk_bytes"] == chunk_mb << 20
    assert keyword_defaults(layer_distances)["chunk_bytes"] == chunk_mb << 20


def test_the_schema_enum_of_sources_is_the_package_list():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["$defs"]["source"]["enum"] == list(SOURCES)


@pytest.mark.parametrize(
    "key, value",
    [
        ("cohomology__hodge_signal", "functoin"),
        ("crossref__source", "router_l3"),
        ("report__source", "weights"),
        ("conjecture__sources", ["router_l1", "functoin"]),
        ("geometry__sources", ["router_l1", "functoin"]),
        ("clusters__absolute", {"router_ll": [500]}),
    ],
)
def test_an_unknown_source_name_is_refused_by_the_schema(key, value):
    with pytest.raises(WorkflowError, match="functoin|router_l3|weights|router_ll"):
        validated(**{key: value})


def test_a_source_named_but_not_computed_is_refused_at_parse_time():
    config = validated(geometry__sources=["router_l1", "coactivation"])
    with pytest.raises(MoetopoError, match="cohomology.hodge_signal names function"):
        check_config(config)
    config["cohomology"]["hodge_signal"] = "router_l1"
    check_config(config)  # every named source is computed now


def test_engineering_sections_are_not_part_of_the_result_parameters():
    config = validated()
    assert set(ENGINEERING_SECTIONS) <= set(config)
    assert not set(ENGINEERING_SECTIONS) & set(result_params(config))
    assert result_params(config)["cohomology"] == config["cohomology"]
