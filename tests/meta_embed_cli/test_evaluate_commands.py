"""`meta-embed evaluate` flags: the quick preset or EvalConfig, the flags given on top, Beam
options passed through to the nightly refreshes, and bad values refused naming the flag."""

from __future__ import annotations

import pytest
import torch

from meta_embed_cli.evaluate_commands import config, evaluate
from meta_embed_cli.main import main


def _config(argv: list[str]):
    ctx = evaluate.make_context("evaluate", argv)
    p = dict(ctx.params)
    fixed = [p.pop(k) for k in ("dataset", "out", "quick", "no_weights_arm", "no_melu")]
    p.pop("render_only")
    return config(ctx, *fixed, p)


def test_flags_build_the_config():
    quick = _config(["--quick", "--out", "r/q"])
    assert [quick.dataset, quick.days, quick.melu, quick.out] == ["movielens-100k", 14, False, "r/q"]
    full = _config(
        [
            "--dataset",
            "movielens-1m",
            "--out",
            "r/f",
            "--days",
            "28",
            "--no-weights-arm",
            "--t0-quantile",
            "0.85",
            "--direct_num_workers=2",
        ]
    )
    assert [full.days, full.weights_arm, full.melu, full.t0_quantile] == [28, False, True, 0.85]
    assert full.beam_args == ("--direct_num_workers=2",)  # a Beam option, passed through
    assert quick.device == full.device == "cpu"
    assert _config(["--quick", "--out", "r/q", "--device", "auto"]).device == "auto"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--days", "0"], "--days must be > 0"),
        (["--t0-quantile", "0.5"], "need 0 < valid_quantile < t0_quantile < 1"),
        (["--dayz", "3"], "Did you mean '--days'?"),
        (["--device", "gpu"], "Invalid value for '--device'"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path, capsys, argv, says):
    assert main(["evaluate", "--out", str(tmp_path / "r"), *argv]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here: --device cuda is accepted")
def test_cuda_without_cuda_is_refused_before_any_work(tmp_path, capsys):
    assert main(["evaluate", "--dataset", "synthetic", "--out", str(tmp_path / "r"), "--device", "cuda"]) == 1
    assert "use --device cpu or auto" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
