"""The sheets at parse time: read literally, names that stay inside results/, no duplicates."""

from __future__ import annotations

import pandas as pd
import pytest
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from moetopo.errors import MoetopoError
from moetopo.pipeline.models import ModelSheet, read_sheet

from conftest import REPO

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
