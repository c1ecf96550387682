"""`benchmarks/scale.py --quick` runs every stage end to end at small sizes, in seconds (a smoke test, not a timing)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scale_stages.children import in_fork  # noqa: E402

STAGES = ("preparation", "training", "serving", "distributed")


@pytest.mark.slow
def test_every_stage_of_the_scale_benchmark_runs_quick_and_records_its_rows(tmp_path):
    workdir = tmp_path / "work"
    command = [sys.executable, "benchmarks/scale.py", "--quick", "--results_dir", str(tmp_path), "--workdir", workdir]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    recorded = json.loads((tmp_path / "scale-quick.json").read_text())
    assert recorded["quick"] and recorded["stages"] == list(STAGES)
    stage_records = [json.loads((workdir / f"{stage}.json").read_text()) for stage in STAGES]  # what --resume reads
    assert all(record["quick"] for record in stage_records)
    assert [row for record in stage_records for row in record["rows"]] == recorded["rows"]
    assert {row["stage"] for row in recorded["rows"]} == set(STAGES)
    for row in recorded["rows"]:
        assert row["wall_s"] > 0 and 0 < row.get("peak_rss_gib", 1) < 16, row
    # every stage measures its work's peak memory in a process of its own (in-process reader timings have none)
    assert {row["stage"] for row in recorded["rows"] if "peak_rss_gib" in row} == set(STAGES)
    assert (tmp_path / "scale-quick.png").stat().st_size > 0


def test_an_unknown_stage_is_refused_in_one_line():
    command = [sys.executable, "benchmarks/scale.py", "--quick", "--stages", "preparation,tokenizing"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown stage tokenizing" in result.stderr.strip().splitlines()[-1]


def test_resume_refuses_the_rows_of_a_run_of_other_sizes(tmp_path, capsys):
    from benchmarks.scale import parse_args, run_stage

    rows = [{"stage": "preparation", "case": "quick", "wall_s": 1.0}]
    (tmp_path / "preparation.json").write_text(json.dumps({"quick": True, "rows": rows}))
    with pytest.raises(SystemExit) as refused:
        parse_args(["--resume", "--workdir", str(tmp_path), "--stages", "preparation,serving"])
    assert refused.value.code == 2
    assert f"{tmp_path / 'preparation.json'} is not the record of a run without --quick" in capsys.readouterr().err
    args = parse_args(["--quick", "--resume", "--workdir", str(tmp_path), "--stages", "preparation"])
    assert run_stage("preparation", tmp_path, args.quick, args.resume) == rows
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--resu", "--workdir", str(tmp_path)])  # no abbreviations


def test_a_forked_child_hands_back_its_result_and_peak_memory():
    result, peak_rss_gib = in_fork(lambda size: len(bytearray(size)), 2**28)
    assert result == 2**28
    assert peak_rss_gib >= 0.25  # the child's own 256 MiB, on top of what it inherited


def test_a_failing_forked_child_is_reported_with_its_traceback():
    def fail():
        raise ValueError("no such column 'user'")

    with pytest.raises(SystemExit, match="(?s)fail failed in a forked child.*ValueError: no such column 'user'"):
        in_fork(fail)
