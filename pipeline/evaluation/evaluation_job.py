"""`evaluate(cfg)`: the offline A/B evaluation of nightly-refreshed meta embeddings
against a wide-and-deep ID baseline, end to end.

1. data: prepare MovieLens (or generate a synthetic world, or read a prepared folder);
2. period: T0 = the `t0_quantile` of event times, validation [valid_quantile, T0),
   test [T0, T0 + days);
3. models at T0: meta-training (activation and weights modes) on events before T0;
   wide-and-deep tuned on the validation period, refitted on events before T0;
4. replay (`pipeline.evaluation.replay`): nightly Beam refreshes, weekly W&D retrains, every
   test event scored by every arm into one Parquet table;
5. metrics (named DuckDB SQL) and the paired, user-clustered bootstrap;
6. MeLU's protocol (regression, four scenarios) when enabled;
7. report.md and PNG plots (`pipeline.evaluation.report`), with the config beside them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from meta_embed import storage
from meta_embed.baseline import FitResult
from meta_embed.config import ModelConfig, WideDeepConfig, write_config
from meta_embed.devices import resolve_device
from meta_embed.features import fit_spec, movielens_template
from meta_embed.tables import TS_TYPE
from pipeline.evaluation import bootstrap, melu, report, wd_tuning
from pipeline.evaluation.costs import costs
from pipeline.evaluation.evaluation_config import DATASETS, REFERENCES, EvalConfig
from pipeline.evaluation.queries import compute_metrics
from pipeline.evaluation.replay import ARMS, ReplaySetup, before, make_period, replay, replay_events
from pipeline.evaluation.report import SLICE_NAMES
from pipeline.training.train_job import load_data, train
from pipeline.training.training_config import TrainJobConfig


@dataclasses.dataclass(frozen=True)
class EvalResult:
    out: Path | str  # a local folder, or the URL the report was uploaded to
    report: Path | str
    metrics: pa.Table  # metric, arm, slice, value, n_events, n_users (SQL)
    intervals: pa.Table  # metric, arm, slice, value, lo, hi
    differences: pa.Table  # metric, slice, arm, reference, diff, lo, hi, p_le_0
    costs: dict
    melu: tuple[dict, ...]
    targets: tuple[dict, ...]
    seconds: float

    @property
    def headline(self) -> str:
        """Printable: GAUC of every arm (columns) by slice (rows) with 95% intervals, then one
        plain line per target."""
        iv = {(r["arm"], r["slice"]): r for r in self.intervals.to_pylist() if r["metric"] == "gauc"}
        arms = [a for a in ARMS if any(k[0] == a for k in iv)]
        slices = [sl for sl in SLICE_NAMES if any(k[1] == sl for k in iv)]
        cell = lambda r: f"{r['value']:.3f} [{r['lo']:.3f},{r['hi']:.3f}]" if r else "n/a"  # noqa: E731
        width = max(len(a) for a in arms + ["0.000 [0.000,0.000]"])
        lines = ["GAUC by slice, 95% intervals", f"{'slice':<18}" + "".join(f" {a:>{width}}" for a in arms)]
        for sl in slices:
            lines.append(f"{sl:<18}" + "".join(f" {cell(iv.get((a, sl))):>{width}}" for a in arms))
        lines += ["", "Targets:"] + [f"  {t['name']}: {t['verdict']}" for t in self.targets]
        return "\n".join(lines)


def _say(text: str) -> None:
    tqdm.write(f"[evaluate] {text}", file=sys.stderr)


def dataset_folder(cfg: EvalConfig, work: Path) -> Path:
    """The prepared data folder of cfg.dataset (prepared or generated under `work` if needed):
    a dataset name, a prepared folder, or a folder of raw MovieLens files."""
    if cfg.dataset not in DATASETS and (Path(cfg.dataset) / "users.parquet").exists():
        return Path(cfg.dataset)
    target = work / "data"
    if (target / "users.parquet").is_file():
        return target
    if cfg.dataset == "synthetic":
        from pipeline.data.data_config import SynthConfig
        from pipeline.data.synth import synth

        synth(
            SynthConfig(
                n_users=cfg.synth_users,
                n_items=150,
                events_per_user=40,
                seed=cfg.seed,
                n_shards=1,
                start="2020-01-01T00:00:00+00:00",
                end="2020-07-01T00:00:00+00:00",
            ),
            target,
        )
    else:
        from pipeline.data.prepare import prepare

        prepare(cfg.dataset, target, cfg.cache_dir)
    return target


def meta_variants(cfg: EvalConfig) -> dict[str, ModelConfig]:
    """The meta models to train, by variant: the main one ("activation"), and the ones of
    the `meta_refresh_weights` and `meta_refresh_user_ids` arms where enabled."""
    variants = {"activation": dataclasses.replace(cfg.model, embedding_mode="activation")}
    if cfg.weights_arm:
        variants["weights"] = dataclasses.replace(cfg.model, embedding_mode="weights")
    if cfg.user_id_arm:
        variants["user_ids"] = dataclasses.replace(variants["activation"], user_id_dim=cfg.user_id_arm)
    return variants


def train_meta(cfg: EvalConfig, data: Path, work: Path, t0_iso: str) -> dict[str, dict]:
    """Meta-train one checkpoint per variant (`meta_variants`) on events before T0."""
    out = {}
    for variant, model in meta_variants(cfg).items():
        _say(f"meta-training ({variant}) on events before T0")
        job = TrainJobConfig(
            str(data),
            str(work / f"ckpt-{variant}"),
            until=t0_iso,
            model=model,
            maml=cfg.maml,
            train=dataclasses.replace(
                cfg.train,
                seed=cfg.seed,
                max_epochs=cfg.meta_epochs,
                threads=cfg.torch_threads,
                device=cfg.device,
            ),
        )
        result = train(job)
        out[variant] = {
            "checkpoint": str(result.checkpoint),
            "seconds": result.seconds,
            "val_auc": result.best_metric,
            "best_epoch": result.best_epoch,
            "embedding_dim": job.model.embedding_dim,
        }
    return out


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


@dataclasses.dataclass(frozen=True)
class Baselines:
    """The wide-and-deep arms at T0: tuned on the validation period, refitted before T0."""

    tuned: wd_tuning.Tuned
    static: FitResult  # wd_static (and wd_retrained's first model)
    tuned_no_id: wd_tuning.Tuned
    no_id: FitResult  # wd_no_id: the same protocol without any user-id input


def _baselines(cfg: EvalConfig, spec, tables, period) -> Baselines:
    inter, users, items = tables.interactions, tables.users, tables.items
    train_wd = before(inter, period.valid_start)
    valid_wd = before(inter, period.t0).filter(
        pc.greater_equal(pc.field("ts"), pa.scalar(period.valid_start, TS_TYPE))
    )
    fitted = []
    for name, user_ids in (("W&D", True), ("W&D without user ids", False)):
        base = WideDeepConfig(
            max_epochs=cfg.wd_max_epochs, seed=cfg.seed, user_ids=user_ids, device=cfg.device
        )
        tuned = wd_tuning.tune(base, spec, users, items, train_wd, valid_wd, cfg.wd_lrs, cfg.wd_dims, _say)
        fit = wd_tuning.refit(tuned, spec, users, items, before(inter, period.t0))
        _say(
            f"{name}: chose lr={tuned.cfg.lr:g} dim={tuned.cfg.embedding_dim} (validation AUC "
            f"{tuned.val_score:.4f}); refit on events before T0 in {fit.seconds:.0f}s"
        )
        fitted += [tuned, fit]
    return Baselines(*fitted)


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Run the whole evaluation (see the module docstring) and write the report under cfg.out.

    Artifacts are written as soon as they exist (predictions.parquet and summary.json after
    the replay, the metric tables, then the MeLU rows), and the report is rendered from
    them (`pipeline.evaluation.report.render`), so a report can be re-rendered without re-running.
    With an object-store `cfg.out` they are written locally and uploaded once the report is done.
    """
    resolve_device(cfg.device)  # refuse a missing CUDA before any work
    with storage.staged_output(cfg.out, last=("report.md",)) as out:
        result = _evaluate(cfg, out)
    if storage.is_remote(cfg.out):
        return dataclasses.replace(result, out=cfg.out, report=storage.join(cfg.out, result.report.name))
    return result


def _evaluate(cfg: EvalConfig, out: Path) -> EvalResult:
    start = time.perf_counter()
    work = out / "work"
    write_config(cfg, out)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        data = dataset_folder(cfg, work)
        tables = load_data(data)
        inter, users, items = tables.interactions, tables.users, tables.items
        period = make_period(inter, cfg.days, cfg.t0_quantile, cfg.valid_quantile)
        _say(
            f"T0 {period.t0.isoformat()}, validation from {period.valid_start.isoformat()}, "
            f"{len(period.points)} refresh points until {period.end.isoformat()}"
        )
        meta = train_meta(cfg, data, work, period.t0.isoformat())
        spec = fit_spec(movielens_template(), users, items)
        wd = _baselines(cfg, spec, tables, period)
        setup = ReplaySetup(
            data,
            inter,
            users,
            items,
            period,
            {m: v["checkpoint"] for m, v in meta.items()},
            wd.static.model,
            wd.no_id.model,
            lambda events: wd_tuning.refit(wd.tuned, spec, users, items, events),
            work,
            cfg.beam_args,
            cfg.retrain_every,
            cfg.device,
        )
        test = replay_events(inter, period)
        bar = tqdm(total=len(period.points), desc="replay", unit="day", file=sys.stderr, disable=None)
        preds, log = replay(
            setup, test, lambda d, info: (bar.update(1), bar.set_postfix(info, refresh=False))
        )
        bar.close()
        pq.write_table(preds, out / "predictions.parquet")
        summary = {
            "period": dataclasses.asdict(period),
            "costs": costs(meta, wd, log, period, test),
            "tuned": dataclasses.asdict(wd.tuned),
            "tuned_no_id": dataclasses.asdict(wd.tuned_no_id),
            "meta": meta,
            "replay_log": dataclasses.asdict(log),
        }
        _write_json(out / "summary.json", summary)
        _say(
            f"{preds.num_rows} predictions written; computing metrics and {cfg.resamples} bootstrap resamples"
        )
        metrics = compute_metrics(out / "predictions.parquet")
        intervals, diffs = bootstrap.bootstrap(preds, REFERENCES, cfg.resamples, cfg.seed)
        for name, table in (("metrics", metrics), ("intervals", intervals), ("differences", diffs)):
            pq.write_table(table, out / f"{name}.parquet")
        if cfg.melu:
            _say("MeLU protocol: regression on the four-scenario split")
            res = melu.run_melu(
                inter,
                users,
                items,
                work / "melu",
                spec,
                wd.tuned.cfg,
                cfg.melu_steps,
                dataclasses.replace(
                    cfg.train,
                    seed=cfg.seed,
                    max_epochs=cfg.meta_epochs,
                    progress=False,
                    threads=cfg.torch_threads,
                    device=cfg.device,
                ),
                cfg.seed,
                _say,
            )
            summary |= {
                "melu": list(res.rows),
                "melu_info": {"train_seconds": res.train_seconds, "counts": res.counts},
            }
            _write_json(out / "summary.json", summary)
    finally:
        torch.set_num_threads(threads)
    report_path, rendered = report.render(out)
    _say(f"report written to {report_path}")
    return EvalResult(
        out,
        report_path,
        metrics,
        intervals,
        diffs,
        summary["costs"],
        tuple(summary.get("melu", ())),
        rendered.targets(),
        time.perf_counter() - start,
    )
