"""The glue every rule's script shares: a user error is one line, a bug a logged traceback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moetopo.errors import MoetopoError
from moetopo.stages import run


def failing(error: Exception):
    def body(_):
        raise error

    return body


def test_a_user_error_is_one_line_in_the_log_and_a_bug_is_its_traceback(tmp_path):
    log = tmp_path / "rule.log"
    job = SimpleNamespace(log=[str(log)])
    with pytest.raises(SystemExit):
        run(job, failing(MoetopoError("shard x.safetensors: truncated")))
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("ERROR shard x.safetensors: truncated")
    with pytest.raises(SystemExit):
        run(job, failing(KeyError("mean")))
    text = log.read_text()
    assert "moetopo failed unexpectedly; please report this log" in text
    assert "Traceback (most recent call last)" in text and "KeyError: 'mean'" in text


def test_a_finished_job_logs_what_it_cost_in_the_line_the_planner_parses(tmp_path):
    """Seconds, bytes read (rchar: the page cache counts) and peak RSS, in the form
    ``python -m moetopo.bench scale --project`` reads."""
    from moetopo.bench.scale import JOB_LINE

    data = tmp_path / "data.bin"
    data.write_bytes(b"\0" * (8 << 20))
    log = tmp_path / "rule.log"
    run(SimpleNamespace(log=[str(log)]), lambda _: data.read_bytes())
    found = JOB_LINE.search(log.read_text())
    assert found is not None
    rss, mib, seconds = (float(g) for g in found.groups())
    assert rss > 0 and mib >= 8 and seconds >= 0
