"""Scale benchmark of the nightly refresh job: synthetic users (about 30 events each),
a random-init checkpoint, one full refresh on the local runner (FnApiRunner, N worker
processes). Prints end-to-end users/s, wall time per phase (finalize on its own), time
per pipeline stage (summed over workers) with the adapt step's share, the peak RSS of the
whole process tree (launcher + Beam workers) and of the launcher alone, sampled every
0.2 s; then the adapt kernel alone on a sample of the same users (the batched inner
loop of the adapt step, in this process, on a random sample of users, with N torch
threads: the same total cores; and with one, for reference; timed in fresh processes
before and after the run and averaged, as the host's speed drifts) and the ratio of
end-to-end users/s to the kernel's.

    .venv/bin/python benchmarks/refresh_scale.py --users 100000
    .venv/bin/python benchmarks/refresh_scale.py --users 1000000 --workdir runs/bench-refresh
    .venv/bin/python benchmarks/refresh_scale.py --users 300000 --device cuda --workers 1
    AWS_ENDPOINT_URL=http://127.0.0.1:8333 ... benchmarks/refresh_scale.py --users 1000000 \
        --out s3://bench/snapshots     # the snapshot on an S3 server (docs/operations.md)

The last line is `summary users=<n> users_per_s=<n> peak_rss_gb=<x> kernel_ratio=<x>
finalize_s=<x>`. A benchmark, never a pass/fail test.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from meta_embed import checkpoint, storage
from meta_embed.config import DEVICES, MamlConfig, ModelConfig, to_dict
from meta_embed.features import fit_spec, movielens_template
from meta_embed.model import TwoBlockModel
from pipeline.data.data_config import SynthConfig
from pipeline.data.synth import synth
from pipeline.data.validate import validate_interactions
from pipeline.refresh.adapt import adapt_bucket, load_adapt_state
from pipeline.refresh.arrow import split_by_bucket, top_n
from pipeline.refresh.plan import USERS_PER_BUCKET
from pipeline.refresh.plan import plan as make_plan
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh
from pipeline.refresh.transforms import ReadEvents


class PeakRss:
    """Samples, in a thread, the summed RSS of this process and all its descendants (`peak`)
    and of this process alone (`launcher`)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.launcher, self._stop = interval, 0, 0, threading.Event()
        self.each: dict[int, int] = {}  # peak RSS of every process seen, by pid
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.each[p.pid] = max(self.each.get(p.pid, 0), rss)
            self.peak = max(self.peak, total)
            self.launcher = max(self.launcher, me.memory_info().rss)
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
    parser.add_argument("--out", help="snapshot root (default WORKDIR/snapshots-USERS; an s3:// URL works)")
    parser.add_argument("--kernel-users", type=int, default=50_000, help="users in the kernel-only timing")
    parser.add_argument("--kernel-only", action="store_true", help="print the kernel's users/s as JSON, only")
    args = parser.parse_args()
    data, as_of = make_inputs(args.workdir, args.users, args.events_per_user, args.items)
    out = args.out or str(args.workdir / f"snapshots-{args.users}")
    cfg = RefreshConfig(
        str(data / "interactions"),
        str(data / "users.parquet"),
        str(data / "items.parquet"),
        str(data / "checkpoint"),
        as_of,
        out,
        batch_size=args.batch_size,
        device=args.device,
    )
    threads = (1, args.workers)
    if args.kernel_only:
        print(json.dumps({t: kernel_users_per_s(cfg, args.kernel_users, t) for t in threads}))
        return
    before = fresh_kernel()  # in a process of its own: a refresh changes how this one allocates
    storage.delete_tree(out)
    beam_args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    cpu = psutil.Process().cpu_times()
    with PeakRss() as rss:
        result = refresh(cfg, beam_args)
    cpu = [a - b for a, b in zip(psutil.Process().cpu_times(), cpu)]  # user, system, children's user, system
    print(f"CPU seconds: launcher {cpu[0] + cpu[1]:.1f}, Beam workers {cpu[2] + cpu[3]:.1f}")
    after = fresh_kernel()  # the host's speed drifts: the kernel before and after the run, averaged
    print(f"adapt kernel users/s before / after the run: {before} / {after}")
    report(result, rss, {t: (before[t] + after[t]) / 2 for t in threads}, args)


def fresh_kernel() -> dict[int, float]:
    """`kernel_users_per_s` at 1 and N threads, timed by this script in a new process."""
    done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--kernel-only"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return {int(t): v for t, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def kernel_users_per_s(cfg: RefreshConfig, n_users: int, threads: int) -> float:
    """Users/s of the adapt step's work alone (`adapt_bucket`: inner loop, embeddings, rows) on
    `n_users` users drawn at random, their events read, validated and cut to the newest N as
    the pipeline does, in buckets of the pipeline's size, in this process with `threads`
    threads (the same total cores as the workers)."""
    plan = make_plan(cfg)
    read = ReadEvents(plan.settings.item_files, plan.spec.item_key, int(plan.meta.as_of.timestamp() * 1e6),
                      plan.target, tuple(plan.context.names), plan.settings.max_support, 1)  # fmt: skip
    read.setup()
    users = pq.read_table(cfg.users)
    pick = np.random.default_rng(0).choice(users.num_rows, min(n_users, users.num_rows), replace=False)
    users = users.take(pa.array(np.sort(pick)))
    wanted = users.column(plan.spec.user_key)
    parts = []
    for path in sorted({c.path for c in plan.event_chunks}):
        table = pq.read_table(path)
        good = validate_interactions(table.filter(pc.is_in(table.column("user_id"), wanted)), path)[0]
        parts.append(read.events(good))
    events = top_n(pa.concat_tables(parts), plan.settings.max_support)
    groups = max(1, round(len(wanted) / USERS_PER_BUCKET))
    bucket_events = dict(split_by_bucket(events, groups))
    bucket_users = dict(split_by_bucket(users, groups, plan.spec.user_key))
    torch.set_num_threads(threads)
    state = load_adapt_state(plan.settings)
    settings = dataclasses.replace(plan.settings, cold_users=False)
    adapt_bucket(state, settings, events.slice(0, 2000), users)  # warm-up
    start, done = time.perf_counter(), 0
    for b, bucket in bucket_events.items():
        done += adapt_bucket(state, settings, bucket, bucket_users[b])[0].num_rows
    return done / (time.perf_counter() - start)


def report(result, rss: PeakRss, kernel: dict[int, float], args: argparse.Namespace) -> None:
    """The tables and the summary line; `kernel` maps torch threads to kernel users/s, and the
    ratio is against the kernel on as many threads as there are workers (the same cores)."""
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
    for name in ("read_ms", "combine_ms", "adapt_ms", "release_ms", "write_ms"):
        ms = result.stage_ms.get(name, 0)
        print(f"{name[:-3]:<28}{ms / 1000:>10.1f}{ms / total_ms:>8.1%}")
    ratio = result.users_per_s / kernel[args.workers]
    in_pipeline = result.counts["users"] / (result.stage_ms["adapt_ms"] / 1000) if result.stage_ms else 0.0
    print(f"\n{'users/s':<44}{'':>10}")
    print(f"{'end to end':<44}{result.users_per_s:>10,.0f}")
    print(f"{f'adapt kernel, {args.workers} threads in one process':<44}{kernel[args.workers]:>10,.0f}")
    print(f"{'adapt kernel, 1 thread':<44}{kernel[1]:>10,.0f}")
    print(f"{'adapt stage in the pipeline, per worker':<44}{in_pipeline:>10,.0f}")
    print(f"{'ratio end to end / kernel':<44}{ratio:>10.2f}   ({args.kernel_users:,} random users)")
    others = sorted((v for pid, v in rss.each.items() if pid != psutil.Process().pid), reverse=True)[:4]
    print(f"\npeak RSS of the largest other processes (GB): {[round(v / 2**30, 2) for v in others]}")
    print(f"peak RSS: process tree {rss.peak / 2**30:.2f} GB, launcher {rss.launcher / 2**30:.2f} GB; "
          f"finalize {result.phase_s['finalize']:.2f} s; out {args.out or 'local disk'}")  # fmt: skip
    print(f"summary users={c['users']} users_per_s={result.users_per_s:.0f} "
          f"peak_rss_gb={rss.peak / 2**30:.2f} kernel_ratio={ratio:.2f} "
          f"finalize_s={result.phase_s['finalize']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
