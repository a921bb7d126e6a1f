"""`meta-embed refresh`: flags into RefreshConfig, Beam options passed through, a summary printed."""

from __future__ import annotations

import json

from meta_embed import snapshot
from meta_embed_cli.main import main
from tests.pipeline.refresh.refresh_fixtures import make_dataset


def test_refresh_command_runs_and_passes_beam_options_through(tmp_path, capsys):
    ds = make_dataset(tmp_path / "data")
    out = tmp_path / "snapshots"
    code = main(["refresh", "--interactions", ds.interactions, "--users", ds.users, "--items", ds.items,
                 "--checkpoint", ds.checkpoint, "--as-of", "2020-04-10", "--out", str(out), "--max-support", "4",
                 "--keep", "2", "--direct_running_mode=in_memory", "--direct_num_workers", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    name = snapshot.current_name(out)
    assert f"published {out / 'snapshots' / name}" in printed and "users/s" in printed
    assert "users 51 = adapted 48 + zero-step 3 + carried forward 0; cold (no events) 3, without features 4" in printed
    manifest = json.loads((out / "snapshots" / name / "manifest.json").read_text())
    assert manifest["runner"] == "FnApiRunner[in_memory,workers=1]"  # the Beam flags reached the runner
    assert manifest["max_support"] == 4 and manifest["as_of"] == "2020-04-10T00:00:00+00:00"
    assert manifest["config"]["keep"] == 2


def test_bad_as_of_is_a_usage_error(tmp_path, capsys):
    code = main(["refresh", "--interactions", "x", "--users", "u", "--items", "i", "--checkpoint", "c",
                 "--as-of", "yesterday", "--out", str(tmp_path)])
    assert code == 2 and "expected ISO-8601" in capsys.readouterr().err


def test_missing_input_fails_with_exit_1(tmp_path, capsys):
    ds = make_dataset(tmp_path / "data")
    code = main(["refresh", "--interactions", str(tmp_path / "nope/*.parquet"), "--users", ds.users, "--items",
                 ds.items, "--checkpoint", ds.checkpoint, "--as-of", "2020-04-10", "--out", str(tmp_path / "o")])
    assert code == 1 and "matched no Parquet files" in capsys.readouterr().err


def test_local_default_names_the_runner_so_nothing_is_downloaded():
    from pipeline.refresh.runners import pipeline_args

    assert pipeline_args(None) == ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                                   "--direct_num_workers=2"]
    assert pipeline_args(["--direct_num_workers=1"]) == ["--runner=FnApiRunner", "--direct_num_workers=1",
                                                          "--direct_running_mode=multi_processing"]
    dataflow = ["--runner=DataflowRunner", "--project=p", "--region=r"]
    assert pipeline_args(dataflow) == dataflow  # any other runner: passed through untouched
