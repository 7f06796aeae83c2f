"""The sheets at parse time: read literally, names that stay inside results/, no duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from moetopo.errors import MoetopoError
from moetopo.pipeline.models import ModelSheet, read_sheet

from conftest import REPO, SMALL_PAIR, demo_config, snakemake

MODELS_SCHEMA = str(REPO / "workflow" / "schemas" / "models.schema.yaml")


def test_a_sheet_is_read_literally(tmp_path):
    sheet = tmp_path / "models.tsv"
    sheet.write_text("model\tpath\tscore\nNA\t/data/run#3/model\t\n")
    table = read_sheet(sheet)
    assert table.to_dict("records") == [{"model": "NA", "path": "/data/run#3/model", "score": ""}]


@pytest.mark.parametrize("name", [".", "..", ".hidden", "a--b", "a/b", "", "-x"])
def test_a_model_name_that_could_leave_results_or_split_a_pair_id_is_refused(name):
    table = pd.DataFrame({"model": [name], "path": ["/m"]})
    with pytest.raises(WorkflowError):
        validate(table, MODELS_SCHEMA)


def test_ordinary_model_names_pass_the_schema():
    names = ["mixtral-e8k2-h64-s0", "qwen3.5_moe", "_x", "A1.ft-code"]
    validate(pd.DataFrame({"model": names, "path": ["/m"] * 4}), MODELS_SCHEMA)


def test_a_duplicate_model_names_the_sheet_and_the_model():
    table = pd.DataFrame({"model": ["a", "b", "a"], "path": ["/1", "/2", "/3"]})
    with pytest.raises(MoetopoError, match=r"model sheet my/models.tsv: model 'a' is listed twice"):
        ModelSheet(table, "my/models.tsv")


@pytest.mark.parametrize("name", ["pairs", "stats", "report"])
def test_names_of_results_folders_are_reserved(name):
    with pytest.raises(MoetopoError, match=f"'{name}' is reserved"):
        ModelSheet(pd.DataFrame({"model": [name], "path": ["/m"]}))


@pytest.mark.parametrize(
    "arrays, problem",
    [
        ({"layer_0": np.array([{"a": 1}], dtype=object)}, "holds Python objects"),
        ({"layer_0": np.zeros((4, 8), np.int32)}, r"is int32 of shape \[4, 8\]"),
        ({"layer_0": np.zeros(8, np.float32)}, r"expected float \[tokens, experts\]"),
        ({"layer_0": np.zeros((4, 8)), "token_ids": np.zeros(4)}, "token_ids is float64"),
        ({"layer_0": np.zeros((4, 8)), "layer_1": np.zeros((5, 8))}, "disagree on the token"),
    ],
)
def test_a_bad_captured_file_is_refused_from_its_headers(tmp_path, arrays, problem):
    from moetopo.checkpoint.captured import captured_shapes

    path = tmp_path / "logits.npz"
    np.savez(path, **arrays)
    expected = f"{path}: cannot read captured router logits .*{problem}"
    with pytest.raises(MoetopoError, match=expected):
        captured_shapes(path)


def test_captured_shapes_read_only_the_headers(tmp_path):
    from moetopo.checkpoint.captured import captured_shapes

    path = tmp_path / "logits.npz"
    big = np.zeros((4096, 64), np.float16)
    np.savez_compressed(path, layer_3=big, layer_5=big, token_ids=np.arange(4096), meta="{}")
    assert captured_shapes(path) == {3: (4096, 64), 5: (4096, 64)}


@pytest.mark.workflow
def test_a_bad_captured_file_stops_the_run_before_any_job(tmp_path):
    """A pickled routing file is refused when the DAG is built: the message names the
    sheet's model and the file, and no job runs, so nothing is left that looks finished."""
    target = demo_config(tmp_path, SMALL_PAIR[:1])
    bad = tmp_path / "pickled.npz"
    np.savez(bad, layer_0=np.array([{"a": 1}], dtype=object))
    sheet = read_sheet(target / "config" / "models.tsv")
    sheet["routing"] = str(bad)
    sheet.to_csv(target / "config" / "models.tsv", sep="\t", index=False)
    result = snakemake(target, "--cores", "1", check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert f"model {SMALL_PAIR[0]!r}: {bad}: cannot read captured router logits" in message
    assert "holds Python objects" in message
    assert "Traceback" not in message and "numpy" not in message
    assert not (target / "results").exists()
