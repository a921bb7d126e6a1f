"""`meta-embed train` and `meta-embed evidence` on a synthetic folder: what they print and
write (the checkpoint, its config and held-out users; the candidates and the comparison);
`--device` values refused before any work."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from meta_embed import checkpoint
from meta_embed_cli.main import main


def test_train_and_evidence_commands_on_a_synthetic_folder(tmp_path, capsys):
    from pipeline.data.data_config import SynthConfig
    from pipeline.data.synth import synth

    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    synth(SynthConfig(n_users=150, n_items=60, events_per_user=20, seed=3, n_shards=2), data)
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(ckpt),
            "--epochs",
            "2",
            "--inner-steps",
            "1",
            "--batch-users",
            "32",
            "--no-progress",
            "--seed",
            "1",
            "--threads",
            "1",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads((ckpt / "train_summary.json").read_text())
    assert f"model_version  {summary['model_version']}" in out and "val auc" in out and "user AUC" in out
    loaded = checkpoint.load(ckpt, expect_spec_hash=summary["feature_spec_hash"])
    assert loaded.model_version == summary["model_version"] and loaded.maml_cfg.inner_steps == 1
    written = json.loads((ckpt / "config.json").read_text())
    assert written["type"] == "TrainJobConfig" and written["config"]["train"]["device"] == "cpu"
    assert (
        summary["n_validation_users"]
        == len(pc.unique(pq.read_table(ckpt / "validation_users.parquet")["user_id"]))
        > 0
    )

    code = main(
        [
            "evidence",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(data),
            "--k",
            "5",
            "--out",
            str(tmp_path / "ev.parquet"),
            "--compare",
            "--query",
            "5",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    table = pq.read_table(tmp_path / "ev.parquet")
    assert table.num_rows == 5 and np.all(np.diff(table["score"].to_numpy()) <= 0)
    assert all(name in out for name in ("evidence", "popular", "random", "recent", "none"))
    listed = out.split("  item\n", 1)[1].split("\n\n", 1)[0].splitlines()  # one line per item, each once
    assert [line.split()[4] for line in listed] == table["item_id"].to_pylist()
    assert "grad_norm  mean norm" in out  # the columns are explained


def test_an_unknown_device_is_a_usage_error(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "ckpt"), "--device", "gpu"]
    assert main(argv) == 2
    assert "Invalid value for '--device'" in capsys.readouterr().err and not (tmp_path / "ckpt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here: --device cuda is accepted")
def test_cuda_without_cuda_is_refused_before_the_data_is_read(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "ckpt"), "--device", "cuda"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--device cuda" in err and "use --device cpu or auto" in err and not (tmp_path / "ckpt").exists()
