"""Scale benchmark of the nightly refresh job: synthetic users (about 30 events each),
a random-init checkpoint, one full refresh on the local runner (FnApiRunner, N worker
processes). Prints end-to-end users/s, wall time per phase, time per pipeline stage
(summed over workers) with the adapt step's share, and the peak RSS of the whole
process tree (launcher + Beam workers), sampled every 0.2 s.

    .venv/bin/python benchmarks/refresh_scale.py --users 100000
    .venv/bin/python benchmarks/refresh_scale.py --users 1000000 --workdir runs/bench-refresh
    .venv/bin/python benchmarks/refresh_scale.py --users 300000 --device cuda --workers 1

The last line is `summary users=<n> users_per_s=<n> peak_rss_gb=<x>`. A benchmark, never
a pass/fail test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import torch

from meta_embed import checkpoint
from meta_embed.config import DEVICES, MamlConfig, ModelConfig, to_dict
from meta_embed.features import fit_spec, movielens_template
from meta_embed.model import TwoBlockModel
from pipeline.data.data_config import SynthConfig
from pipeline.data.synth import synth
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh


class PeakRss:
    """Samples the summed RSS of this process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def make_inputs(workdir: Path, users: int, events_per_user: float, items: int) -> tuple[Path, dt.datetime]:
    """Synthetic tables (reused when already generated with the same config) and a checkpoint."""
    cfg = SynthConfig(
        n_users=users,
        n_items=items,
        events_per_user=events_per_user,
        seed=0,
        n_shards=max(2, users // 50_000),
    )
    data = workdir / f"data-{users}"
    written = data / "config.json"
    if not written.is_file() or json.loads(written.read_text())["config"] != to_dict(cfg):
        shutil.rmtree(data, ignore_errors=True)
        start = time.perf_counter()
        summary = synth(cfg, data)
        print(
            f"synth: {summary.n_interactions:,} events for {users:,} users in "
            f"{time.perf_counter() - start:.1f} s"
        )
    ckpt = data / "checkpoint"
    if not ckpt.is_dir():
        torch.manual_seed(0)
        users, items = pq.read_table(data / "users.parquet"), pq.read_table(data / "items.parquet")
        spec = fit_spec(movielens_template(), users, items)
        checkpoint.save(TwoBlockModel(spec, ModelConfig()), MamlConfig(), ckpt)
    end = dt.datetime.fromisoformat(cfg.end)
    return data, end


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events-per-user", type=float, default=30.0)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-refresh"))
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where the adapt step runs")
    args = parser.parse_args()
    data, as_of = make_inputs(args.workdir, args.users, args.events_per_user, args.items)
    out = args.workdir / f"snapshots-{args.users}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = RefreshConfig(
        str(data / "interactions"),
        str(data / "users.parquet"),
        str(data / "items.parquet"),
        str(data / "checkpoint"),
        as_of,
        str(out),
        batch_size=args.batch_size,
        device=args.device,
    )
    beam_args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    with PeakRss() as rss:
        result = refresh(cfg, beam_args)
    report(result, rss.peak, args)


def report(result, peak: int, args: argparse.Namespace) -> None:
    c = result.counts
    print(
        f"\nrefresh of {c['users']:,} users ({c['users_with_events']:,} with events, {c['cold_users']:,} "
        "cold), "
        f"{c['events_read']:,} events read, {c['events_used']:,} used; runner {result.runner}; "
        f"--device {args.device}"
    )
    print(f"{'phase (wall)':<28}{'seconds':>10}")
    for name, sec in result.phase_s.items():
        print(f"{name:<28}{sec:>10.1f}")
    print(f"{'total':<28}{result.seconds:>10.1f}")
    total_ms = sum(result.stage_ms.values()) or 1
    print(f"\n{'stage (summed over workers)':<28}{'seconds':>10}{'share':>8}")
    for name in ("read_ms", "combine_ms", "adapt_ms", "write_ms"):
        ms = result.stage_ms.get(name, 0)
        print(f"{name[:-3]:<28}{ms / 1000:>10.1f}{ms / total_ms:>8.1%}")
    print(f"\nend-to-end {result.users_per_s:,.0f} users/s; peak RSS (process tree) {peak / 2**30:.2f} GB")
    print(f"summary users={c['users']} users_per_s={result.users_per_s:.0f} peak_rss_gb={peak / 2**30:.2f}")


if __name__ == "__main__":
    main()
