"""`evaluate(cfg)` end to end on a tiny synthetic world (real Beam refreshes, every arm),
the config checks and the `meta-embed evaluate` flags."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.evaluation.evaluation_config import EvalConfig
from pipeline.evaluation.evaluation_job import evaluate
from pipeline.evaluation.queries import PREDICTIONS

ARMS = {
    "popularity",
    "wd_static",
    "wd_no_id",
    "wd_retrained",
    "meta_refresh",
    "meta_static",
    "meta_init",
    "meta_refresh_weights",
    "meta_refresh_user_ids",
}


def test_synthetic_end_to_end(tmp_path):
    cfg = EvalConfig(
        dataset="synthetic",
        out=str(tmp_path / "report"),
        days=3,
        retrain_every=2,
        synth_users=150,
        meta_epochs=1,
        wd_lrs=(3e-3,),
        wd_dims=(8,),
        wd_max_epochs=2,
        resamples=50,
        melu=False,
    )
    result = evaluate(cfg)
    out = tmp_path / "report"
    preds = pq.read_table(out / "predictions.parquet")
    assert preds.schema.equals(PREDICTIONS)
    assert set(preds["arm"].to_pylist()) == ARMS
    per_arm = preds.group_by("arm").aggregate([("score", "count")])["score_count"].to_pylist()
    assert len(set(per_arm)) == 1  # every arm scored every test event
    assert (
        pc.min(preds["rank"]).as_py() >= 0 and pc.all(pc.less(preds["rank"], preds["n_candidates"])).as_py()
    )
    assert result.costs["meta_refresh"]["nightly_refreshes"] == 3  # after the full refresh at T0
    assert result.costs["meta_refresh_user_ids"]["nightly_refreshes"] == 3
    uid_model = json.loads((out / "work" / "ckpt-user_ids" / "model.json").read_text())["model"]
    assert uid_model["user_id_dim"] == cfg.user_id_arm > 0  # the arm's model has the user-id input
    assert result.costs["wd_retrained"]["retrains"] == 1  # day 2 of days 0..3
    report = (out / "report.md").read_text()
    for needle in (
        "## Targets",
        "GAUC by slice",
        "per user-day",
        "## gauc_day by slice",
        "## Cost",
        "## Where the gap is: shared model and personalization lift",
        "shared model: meta_init - wd_no_id",
        "In plain words:",
        "gauc_by_slice.png",
        "gauc_day_vs_wd_static.png",
        "calibration.png",
    ):
        assert needle in report
    for png in ("gauc_by_slice.png", "gauc_vs_wd_static.png", "gauc_by_day.png", "calibration.png"):
        size = (out / png).stat().st_size
        assert size > 1000
    assert json.loads((out / "config.json").read_text())["config"]["days"] == 3
    assert len(result.targets) == 7 and all(t["met"] in (True, False, None) for t in result.targets)
    head = result.headline.splitlines()
    assert head[0] == "GAUC by slice, 95% intervals" and set(head[1].split()) == {"slice"} | ARMS
    assert head[2].split()[0] == "overall"
    verdicts = head[head.index("Targets:") + 1 :]
    assert len(verdicts) == 7 and all(
        line.split(": ")[1].startswith(("met", "missed", "not")) for line in verdicts
    )
    assert result.costs["wd_no_id"]["serving_bytes_per_user"] == 0


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"dataset": "nope"}, "dataset"),
        ({"t0_quantile": 0.6, "valid_quantile": 0.7}, "valid_quantile"),
        ({"days": 0}, "days"),
        ({"wd_lrs": ()}, "wd_lrs"),
        ({"melu_steps": (0,)}, "melu_steps"),
    ],
)
def test_config_is_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        EvalConfig(**bad)
