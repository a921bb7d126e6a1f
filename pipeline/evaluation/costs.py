"""What each arm of the evaluation costs: training time, refresh time (the full refresh
at T0 and the nightly incremental ones, per 1k users), W&D retraining time, and serving
bytes per user."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.evaluation.replay import VARIANT_ARMS, Period, ReplayLog


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def costs(meta: dict, wd: Any, log: ReplayLog, period: Period, test: pa.Table) -> dict[str, dict]:
    """Training time, refresh time (per 1k users) and serving bytes per user, per arm; `wd`
    holds the tuned and fitted W&D arms (`evaluation_job.Baselines`)."""

    def refresh_costs(variant: str) -> dict:
        runs = [r for r in log.refreshes if r["variant"] == variant]
        full, nightly = runs[0], runs[1:]
        return {
            "refresh_full_s": full["seconds"],
            "refresh_full_users": full["users_adapted"],
            "refresh_full_s_per_1k_users": 1000 * full["seconds"] / max(full["users"], 1),
            "nightly_refresh_mean_s": _mean([r["seconds"] for r in nightly]),
            "nightly_users_adapted_mean": _mean([r["users_adapted"] for r in nightly]),
            "nightly_refresh_s_per_1k_users": _mean(
                [1000 * r["seconds"] / max(r["users"], 1) for r in nightly]
            ),
            "nightly_refreshes": len(nightly),
            "runner": full["runner"],
        }

    out = {
        arm: {
            "training_s": tuned.seconds + fit.seconds,
            "tuning_s": tuned.seconds,
            "fit_s": fit.seconds,
            "serving_bytes_per_user": fit.model.user_bytes(),
        }
        for arm, tuned, fit in (("wd_static", wd.tuned, wd.static), ("wd_no_id", wd.tuned_no_id, wd.no_id))
    }
    retrains = [r["seconds"] for r in log.retrains]
    out["wd_retrained"] = out["wd_static"] | {
        "retrains": len(retrains),
        "retrain_mean_s": _mean(retrains),
        "retrain_total_s": float(sum(retrains)),
        "nightly_equivalent_s": _mean(retrains) * len(period.points),
    }
    act = meta["activation"]
    bytes_act = 4 * act["embedding_dim"]
    out["meta_refresh"] = {
        "training_s": act["seconds"],
        "serving_bytes_per_user": bytes_act,
        **refresh_costs("activation"),
    }
    out["meta_static"] = {
        "training_s": act["seconds"],
        "serving_bytes_per_user": bytes_act,
        "refresh_full_s": out["meta_refresh"]["refresh_full_s"],
    }
    out["meta_init"] = {"training_s": act["seconds"], "serving_bytes_per_user": bytes_act}
    for variant, arm in VARIANT_ARMS.items():
        if variant in meta:
            out[arm] = {
                "training_s": meta[variant]["seconds"],
                "serving_bytes_per_user": 4 * meta[variant]["embedding_dim"],
                **refresh_costs(variant),
            }
    out["popularity"] = {"training_s": 0.0, "serving_bytes_per_user": 0}
    out["_scoring"] = {"scoring_s": log.scoring_seconds, "test_events": test.num_rows}
    return out
