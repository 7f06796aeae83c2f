"""Remote checkpoints over HTTP: the hub's URL shape and a plain directory, served on
loopback by a server that also misbehaves on demand."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from moetopo.checkpoint import remote
from moetopo.checkpoint.reader import TensorReader
from moetopo.checkpoint.shards import open_checkpoint
from moetopo.errors import CheckpointError
from moetopo.fixtures.families import write_family
from moetopo.fixtures.http_server import CheckpointServer, Fault
from moetopo.fixtures.model import random_model

from conftest import REPO, SMALL_PAIR, demo_config, forget_remote_mirrors, snakemake


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("remote") / "tiny"
    return write_family(random_model(n_layers=2, n_experts=4), "deepseek_v3", directory, n_shards=3)


@pytest.fixture
def server(local_model, tmp_path, monkeypatch):
    """The tiny model served as hub repository org/tiny, with a fresh cache and no mirror
    remembered by this process."""
    monkeypatch.setenv("MOETOPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    forget_remote_mirrors(monkeypatch)
    with CheckpointServer() as srv:
        srv.add("org/tiny", local_model)
        monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
        yield srv


def read_all(checkpoint, names=None) -> dict[str, np.ndarray]:
    reader = TensorReader(checkpoint)
    return {n: reader.read(n) for n in (names or sorted(reader.logical))}


def fetched_ranges(server) -> dict[str, list[tuple[int, int]]]:
    ranges: dict[str, list[tuple[int, int]]] = {}
    for served in server.log:
        if served.status in (200, 206):
            ranges.setdefault(served.file, []).append((served.begin, served.end))
    return ranges


def test_a_hub_model_reads_exactly_as_the_local_one(server, local_model):
    checkpoint = open_checkpoint("hf://org/tiny")
    local = open_checkpoint(local_model)
    assert {n: e[2:] for n, e in checkpoint.tensors.items()} == {
        n: e[2:] for n, e in local.tensors.items()
    }
    ours, theirs = read_all(checkpoint), read_all(local)
    for name, values in theirs.items():
        np.testing.assert_array_equal(ours[name], values, err_msg=name)
    served = [*local_model.glob("*.safetensors"), local_model / "config.json"]
    served.append(local_model / "model.safetensors.index.json")
    assert remote.FETCHED.bytes == sum(p.stat().st_size for p in served)  # each byte once


def test_a_plain_http_directory_and_a_pinned_revision(server, local_model):
    plain = open_checkpoint(server.plain("org/tiny"))
    pinned = open_checkpoint(f"hf://org/tiny@{server.revision}")
    local = open_checkpoint(local_model)
    assert set(plain.tensors) == set(pinned.tensors) == set(local.tensors)
    assert any(f"/resolve/{server.revision}/" in url for url in remote.DISPLAY_NAMES.values())


def test_the_summary_records_where_each_shard_came_from(server, local_model):
    from moetopo.checkpoint.layout import build_layout
    from moetopo.checkpoint.summary import model_summary

    checkpoint = open_checkpoint("hf://org/tiny")
    summary = model_summary(checkpoint, build_layout(checkpoint))
    assert summary["path"] == "hf://org/tiny"
    for shard in summary["shards"]:
        assert shard["source"] == f"{server.endpoint}/org/tiny/resolve/main/{shard['name']}"
        assert shard["revision"] == server.revision
        assert shard["etag"].startswith('"')


def test_a_second_run_fetches_nothing_and_a_resumed_run_nothing_twice(server, monkeypatch):
    names = sorted(TensorReader(open_checkpoint("hf://org/tiny")).logical)
    read_all(open_checkpoint("hf://org/tiny"), names[: len(names) // 2])  # then killed
    forget_remote_mirrors(monkeypatch)
    read_all(open_checkpoint("hf://org/tiny"))  # resumed
    for file, ranges in fetched_ranges(server).items():
        total = sum(e - b for b, e in ranges)
        union = sum(e - b for b, e in remote._merged([list(r) for r in ranges]))
        assert total == union, f"{file}: bytes fetched twice"
    before = len(server.log)
    forget_remote_mirrors(monkeypatch)
    read_all(open_checkpoint("hf://org/tiny"))
    assert len(server.log) == before and remote.FETCHED.requests == 0


def test_large_ranges_go_as_parts_in_flight_at_once(server, local_model, monkeypatch):
    monkeypatch.setattr(remote, "PART_BYTES", 1000)
    ours = read_all(open_checkpoint("hf://org/tiny"))
    theirs = read_all(open_checkpoint(local_model))
    for name, values in theirs.items():
        np.testing.assert_array_equal(ours[name], values, err_msg=name)
    assert max(s.end - s.begin for s in server.log if s.status == 206) == 1000


@pytest.mark.parametrize("kind", ["drop", "503", "short", "wrong_range"])
def test_a_transient_fault_is_retried_and_recovers(server, local_model, kind, monkeypatch):
    monkeypatch.setattr(remote, "POLICY", remote.RetryPolicy(max_wait=30, first_delay=0.02))
    checkpoint = open_checkpoint("hf://org/tiny")
    server.faults.append(Fault(kind, match="00002", count=2, retry_after=0.05))
    ours = read_all(checkpoint)
    for name, values in read_all(open_checkpoint(local_model)).items():
        np.testing.assert_array_equal(ours[name], values, err_msg=name)
    assert server.faults[0].count == 0  # both faults were served, and survived


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("503", "HTTP 503"),
        ("drop", "RemoteProtocolError"),
        ("short", "short body"),
        ("wrong_range", "Content-Range"),
    ],
)
def test_a_fault_that_lasts_ends_in_a_clear_error_in_bounded_time(
    server, monkeypatch, kind, reason
):
    checkpoint = open_checkpoint("hf://org/tiny")
    monkeypatch.setattr(remote, "POLICY", remote.RetryPolicy(max_wait=0.6, first_delay=0.05))
    server.faults.append(Fault(kind, count=10_000, retry_after=0.05))
    start = time.monotonic()
    with pytest.raises(CheckpointError) as error:
        read_all(checkpoint)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert f"{server.endpoint}/org/tiny/resolve/main/model-" in message
    assert "[tensor '" in message and "gave up" in message and reason in message


def test_a_file_changed_mid_run_is_an_error_not_a_mix(server):
    checkpoint = open_checkpoint("hf://org/tiny")
    server.faults.append(Fault("change_etag", count=1))
    with pytest.raises(CheckpointError, match="the remote file changed"):
        read_all(checkpoint)


def test_a_missing_model_says_what_was_looked_for(server):
    with pytest.raises(CheckpointError, match="no model.safetensors.index.json and no model"):
        open_checkpoint("hf://org/absent")


def test_the_token_goes_to_the_hub_only_and_is_written_nowhere(server, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_the_test")
    monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN")
    open_checkpoint("hf://org/tiny")
    hub = [s.authorization for s in server.log]
    open_checkpoint(server.plain("org/tiny"))
    plain = [s.authorization for s in server.log[len(hub) :]]
    assert hub and all(a == "Bearer hf_secret_for_the_test" for a in hub)
    assert plain and not any(plain)
    for path in (tmp_path / "cache").rglob("*.json"):
        assert "hf_secret" not in path.read_text()


def test_inspect_reads_a_hub_model_from_its_headers(server, capsys):
    from moetopo.__main__ import main

    assert main(["inspect", "hf://org/tiny", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] == "hf://org/tiny" and summary["n_experts"] == 4
    assert all(s.status == 206 or s.file.endswith(".json") for s in server.log)
    assert remote.FETCHED.bytes < 12_000  # the headers: no tensor bytes


@pytest.mark.workflow
def test_the_pipeline_on_a_served_model_writes_what_the_local_run_writes(
    small_run, tmp_path, monkeypatch
):
    """One zoo model read as hf:// by the whole pipeline: every artefact of the model equals
    the local run's, but where a shard came from; a second run fetches nothing."""
    import pandas as pd

    from moetopo.artefacts import read_table

    model = SMALL_PAIR[0]
    target = demo_config(tmp_path / "run", (model,))
    sheet = pd.read_csv(target / "config/models.tsv", sep="\t", dtype=str).fillna("")
    sheet["path"] = [f"hf://zoo/{model}"]
    sheet.to_csv(target / "config/models.tsv", sep="\t", index=False)
    with CheckpointServer() as server:
        server.add(f"zoo/{model}", REPO / "resources/zoo" / model)
        env = dict(os.environ, HF_ENDPOINT=server.endpoint, MOETOPO_CACHE=str(tmp_path / "c"))
        snakemake(target, "--cores", "2", env=env)
        fetched = len(server.log)
        assert "Nothing to be done" in snakemake(target, "--cores", "2", env=env).stderr
        assert len(server.log) == fetched
    ours, local = target / "results" / model, small_run / "results" / model
    written = sorted(p.relative_to(ours) for p in ours.rglob("*.parquet"))
    assert written
    for relative in written:
        remote_table, remote_meta = read_table(ours / relative)
        local_table, local_meta = read_table(local / relative)
        pd.testing.assert_frame_equal(remote_table, local_table, obj=str(relative))
        for key in set(remote_meta) - {"source", "etag", "revision", "shards"}:
            assert remote_meta[key] == local_meta[key], (relative, key)
    summary = json.loads((ours / "model.json").read_text())
    assert summary["path"] == f"hf://zoo/{model}"
    assert {s["revision"] for s in summary["shards"]} == {server.revision}


def test_the_gates_artefact_holds_bf16_routers_in_fewer_bytes_than_bf16(tmp_path):
    """Later router sources read the gates artefact, not the remote model: its router rows
    are the stored BF16 values exactly, in no more bytes than the BF16 routers (float32
    elements split into byte streams, the two zero low bytes compressing away)."""
    import ml_dtypes
    import pyarrow.parquet as pq

    from moetopo.artefacts import read_table, stream_table

    rng = np.random.default_rng(0)
    layers = [(rng.standard_normal((64, 1024)) * 0.02).astype(ml_dtypes.bfloat16)] * 3
    path = tmp_path / "gates.parquet"
    with stream_table(path, "gates") as out:
        for layer, rows in enumerate(layers):
            n = rows.shape[0]
            values = rows.astype(np.float32)
            out.write(
                {
                    "layer": np.full(n, layer),
                    "expert": np.arange(n),
                    "weight": values,
                    "bias": np.full(n, np.nan, np.float32),
                    "selection_bias": np.full(n, np.nan, np.float32),
                    "norm": np.linalg.norm(values, axis=1).astype(np.float64),
                    "finite": np.ones(n, bool),
                }
            )
    meta = pq.ParquetFile(path).metadata
    stored = sum(
        meta.row_group(g).column(c).total_compressed_size
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
        if meta.row_group(g).column(c).path_in_schema == "weight.list.element"
    )
    assert stored < sum(rows.nbytes for rows in layers)
    table, _ = read_table(path)
    back = np.stack(table.weight.to_numpy()[:64])
    np.testing.assert_array_equal(back, layers[0].astype(np.float32))


def test_inventory_and_gates_fetch_the_headers_and_router_bytes_only(server, tmp_path):
    """What a router-only run costs a remote model: its small files, every header, and
    each router's (and router bias's) exact bytes; not one byte of anything else."""
    from moetopo.artefacts import read_columns, write_table
    from moetopo.stages.gates import Routers, gate_batches
    from moetopo.stages.inventory import merge_inventory
    from moetopo.stages.inventory_shard import shard_rows

    location = "hf://org/tiny"
    paths = []
    for shard in remote.mirror(location).files:
        if shard.endswith(".safetensors"):
            rows, meta = shard_rows(location, shard)
            paths.append(tmp_path / f"{shard}.parquet")
            write_table(rows, paths[-1], "shard_header", extra=meta)
    inventory, summary, layout = merge_inventory(location, [read_columns(p) for p in paths])
    write_table(inventory, tmp_path / "inventory.parquet", "inventory", extra=summary)
    routers = Routers.from_inventory(location, tmp_path / "inventory.parquet", summary)
    rows = sum(len(batch["expert"]) for batch in gate_batches(routers, []))
    assert rows == sum(m.n_experts for m in layout.layers.values())
    checkpoint = open_checkpoint(location)
    small = sum(f.size for n, f in remote.mirror(location).files.items() if n.endswith(".json"))
    headers = sum(h.data_start for h in _headers(checkpoint))
    routed = {n for m in layout.layers.values() for n in (m.router, m.router_bias) if n}
    router_bytes = sum(checkpoint.tensors[n].nbytes for n in routed)
    assert remote.FETCHED.bytes == small + headers + router_bytes


def _headers(checkpoint):
    from moetopo.checkpoint.header import read_shard_header

    return [read_shard_header(checkpoint.shard_path(s), s) for s in checkpoint.shards]


def test_a_hub_redirect_to_its_cdn_keeps_the_commit_and_the_files_etag(server, local_model):
    server.redirect = True
    checkpoint = open_checkpoint("hf://org/tiny")
    ours, theirs = read_all(checkpoint), read_all(open_checkpoint(local_model))
    for name, values in theirs.items():
        np.testing.assert_array_equal(ours[name], values, err_msg=name)
    record = remote.provenance(checkpoint.shard_path(checkpoint.shards[0]))
    assert record["revision"] == server.revision
    assert not record["etag"].startswith('"cdn-')  # the file's, from the hub's answer
