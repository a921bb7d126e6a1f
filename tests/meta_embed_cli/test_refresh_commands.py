"""`meta-embed refresh` (flags into RefreshConfig, Beam options passed through, a summary
printed, a typo refused before any work, `--device` for the adapt step) and the operations
around it end to end on a tiny dataset: nightly (incremental) refreshes with serving indexes,
a model release that switches model and embeddings together, rollback, and the snapshot listing."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from meta_embed import snapshot
from meta_embed_cli.main import main
from meta_embed_cli.refresh_commands import midnight_utc
from tests.pipeline.refresh.refresh_fixtures import AS_OF, make_dataset, write_checkpoint

FAST = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _manifest(root) -> dict:
    return json.loads((snapshot.current_dir(root) / snapshot.MANIFEST).read_text())


def _refresh(ds, out, *flags: str, interactions: str | None = None) -> list[str]:
    """A `meta-embed refresh` command line over the fixture dataset, with `flags` after it."""
    return ["refresh", "--interactions", interactions or ds.interactions, "--users", ds.users,
            "--items", ds.items, "--checkpoint", ds.checkpoint, "--as-of", "2020-04-10", "--out", str(out),
            *flags]  # fmt: skip


def test_refresh_command_runs_and_passes_beam_options_through(tmp_path, capsys):
    ds = make_dataset(tmp_path / "data")
    out = tmp_path / "snapshots"
    code = main(_refresh(ds, out, "--max-support", "4", "--keep", "2", "--device", "cpu",
                         "--direct_running_mode=in_memory", "--direct_num_workers", "1"))  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    name = snapshot.current_name(out)
    assert f"published {out / 'snapshots' / name}" in printed and "users/s" in printed
    counts = "users 51 = adapted 48 + zero-step 3 + carried forward 0; cold (no events) 3, without features 4"
    assert counts in printed
    manifest = json.loads((out / "snapshots" / name / "manifest.json").read_text())
    assert manifest["runner"] == "FnApiRunner[in_memory,workers=1]"  # the Beam flags reached the runner
    assert manifest["max_support"] == 4 and manifest["as_of"] == "2020-04-10T00:00:00+00:00"
    assert manifest["config"]["keep"] == 2 and manifest["config"]["device"] == "cpu"


def test_bad_as_of_is_a_usage_error(tmp_path, capsys):
    argv = ["refresh", "--interactions", "x", "--users", "u", "--items", "i", "--checkpoint", "c",
            "--as-of", "yesterday", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2 and "'yesterday' is not an ISO-8601 time" in capsys.readouterr().err


def test_a_typo_is_refused_before_any_work(tmp_path, capsys):
    ds = make_dataset(tmp_path / "data")
    out = tmp_path / "snapshots"
    code = main(_refresh(ds, out, "--incremnetal", "--kep", "1", *FAST))
    err = capsys.readouterr().err
    assert code == 2 and "No such option '--incremnetal'" in err and "Did you mean '--incremental'?" in err
    assert not out.exists()  # nothing ran: no staging, no snapshot
    assert main(_refresh(ds, out, "--kep", "1")) == 2
    assert "Did you mean '--keep'?" in capsys.readouterr().err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here: --device cuda is accepted")
def test_cuda_without_cuda_is_refused_before_the_pipeline_runs(tmp_path, capsys):
    ds = make_dataset(tmp_path / "data")
    out = tmp_path / "snapshots"
    assert main(_refresh(ds, out, "--device", "cuda", *FAST)) == 1
    assert "use --device cpu or auto" in capsys.readouterr().err
    assert snapshot.current_name(out) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_adapt_step_on_cuda_agrees_with_the_cpu(tmp_path, capsys):
    ds = make_dataset(tmp_path / "data")
    tables = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(_refresh(ds, out, "--device", device, *FAST)) == 0, capsys.readouterr().out
        tables[device] = snapshot.read_dir(snapshot.current_dir(out), memory_map=False)[0].sort_by("user_id")
    cpu, cuda = tables["cpu"], tables["cuda"]
    assert cuda["user_id"].to_pylist() == cpu["user_id"].to_pylist()
    assert cuda["n_support"].to_pylist() == cpu["n_support"].to_pylist()
    np.testing.assert_allclose(
        snapshot.embeddings_of(cuda), snapshot.embeddings_of(cpu), rtol=1e-4, atol=1e-5
    )


def test_missing_input_fails_with_exit_1(tmp_path, capsys):
    ds = make_dataset(tmp_path / "data")
    code = main(_refresh(ds, tmp_path / "o", interactions=str(tmp_path / "nope/*.parquet")))
    assert code == 1 and "matched no Parquet files" in capsys.readouterr().err


def test_local_default_names_the_runner_so_nothing_is_downloaded():
    from pipeline.refresh.runners import pipeline_args

    assert pipeline_args(None) == [
        "--runner=FnApiRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    ]
    assert pipeline_args(["--direct_num_workers=1"]) == [
        "--runner=FnApiRunner",
        "--direct_num_workers=1",
        "--direct_running_mode=multi_processing",
    ]
    dataflow = ["--runner=DataflowRunner", "--project=p", "--region=r"]
    assert pipeline_args(dataflow) == dataflow  # any other runner: passed through untouched


def test_midnight_utc():
    now = dt.datetime(2024, 6, 2, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert midnight_utc(now) == dt.datetime(2024, 6, 3, tzinfo=dt.UTC)


@pytest.mark.slow
def test_nightly_release_rollback(tmp_path, capsys):
    ds = make_dataset(tmp_path / "data")
    root = tmp_path / "snapshots"
    common = ["--interactions", ds.interactions, "--users", ds.users, "--items", ds.items, "--out", str(root)]

    day1, day2 = AS_OF.isoformat(), (AS_OF + dt.timedelta(days=1)).isoformat()
    assert main(["nightly", *common, "--checkpoint", ds.checkpoint, "--as-of", day1, *FAST]) == 0
    first = _manifest(root)
    assert first["mode"] == "full" and list((snapshot.current_dir(root) / "indexes").iterdir())
    assert main(["nightly", *common, "--checkpoint", ds.checkpoint, "--as-of", day2, *FAST]) == 0
    second = _manifest(root)
    assert second["mode"] == "incremental" and second["counts"]["users_carried_forward"] > 0

    assert main(["rollback", "--out", str(root)]) == 0
    assert snapshot.current_name(root) == first["name"]

    new_ckpt = tmp_path / "ckpt-new"
    users, items = pq.read_table(ds.users), pq.read_table(ds.items)
    version = write_checkpoint(new_ckpt, users, items, seed=7)
    assert main(["release", *common, "--checkpoint", str(new_ckpt), "--as-of", day2, *FAST]) == 0
    released = _manifest(root)
    assert released["model_version"] == version != first["model_version"]
    assert released["mode"] == "full" and released["checkpoint"] == str(new_ckpt.resolve())

    from serving.serving_config import ServingConfig
    from serving.state import Sources, load_state

    # A server started with only the old checkpoint still finds the released model through the manifest.
    cfg = ServingConfig(root=root, items=ds.items, users=ds.users, checkpoint=ds.checkpoint)
    state = load_state(cfg, Sources.read(cfg))
    assert state.model_version == version and state.snapshot == released["name"]


def test_rollback_without_history_is_an_error(tmp_path, capsys):
    assert main(["rollback", "--out", str(tmp_path)]) == 1
    assert "roll back" in capsys.readouterr().err


@pytest.mark.slow
def test_the_local_runner_workers_are_quiet_unless_verbose(tmp_path):
    """The default runner's worker processes log their start-up and shut-down at INFO, and
    Beam's import warns about apitools: none of it reaches the output unless --verbose."""
    import os
    import subprocess
    import sys

    ds = make_dataset(tmp_path / "data")

    def run(*flags: str) -> str:
        argv = [sys.executable, "-m", "meta_embed_cli", *_refresh(ds, tmp_path / "snapshots", *flags)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=os.environ)
        assert done.returncode == 0, done.stderr
        return done.stderr

    quiet = run("--keep", "2")
    assert "INFO" not in quiet and "apitools" not in quiet and "semi_persistent" not in quiet, quiet
    loud = run("--keep", "2", "--verbose")
    assert loud.count("Python sdk harness starting") >= 2 and "apitools" in loud  # two worker processes
