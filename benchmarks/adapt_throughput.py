"""Users adapted per second: the batched inner loop (`meta_embed.inference.embed_users`,
i.e. `maml.adapt_and_embed`) against a per-user loop of the same math written the
MeLU way (one user at a time: fast weights loaded into an nn.Module, plain autograd on
that user's support events, the full model forward per user). Same process, same
thread count, same model, same users.

Support sizes follow ML-1M's ratings per user capped at 100: the real counts when a
prepared ML-1M folder is given (--data), else a lognormal fit of them (median 96,
sigma 0.95 in log space, at least 20 ratings, as in ML-1M) on synthetic features.

Also prints the achieved GFLOP/s of the batched inner loop, counted analytically (see
`inner_loop_flops`), next to the float32 matmul peak of its device measured in the run.

`--device cuda` (or `auto`) runs the batched loop on the GPU, the model and feature tables
moved there once; the per-user loops stay on the CPU, so the speedups then compare a GPU
against the CPU loops, and max |diff| is the GPU's distance from the CPU's arithmetic.

    python benchmarks/adapt_throughput.py [--data data/ml-1m] [--users 4096] [--loop-users 200] [--threads N]
        [--device cpu|cuda|auto]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from meta_embed.config import DEVICES, MamlConfig, ModelConfig
from meta_embed.devices import resolve_device
from meta_embed.features import fit_spec, movielens_template, take
from meta_embed.inference import embed_users
from meta_embed.maml import pointwise_loss
from meta_embed.model import TwoBlockModel
from meta_embed.tables import INTERACTIONS, ITEMS, USERS
from meta_embed.tasks import FeatureTables, TaskSet, build_tasks, cut

CAP = 100


def synthetic_data(n_users: int, seed: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Users/items with ML-1M-like features; per-user counts from a lognormal fit of ML-1M."""
    rng = np.random.default_rng(seed)
    n_items = 3706
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "War"]
    users = pa.table(
        {
            "user_id": [f"u{k}" for k in range(n_users)],
            "age": pa.array(rng.choice([1, 18, 25, 35, 45, 50, 56], n_users), pa.int32()),
            "gender": rng.choice(["F", "M"], n_users),
            "occupation": rng.choice([f"o{k}" for k in range(21)], n_users),
            "zip_prefix": [f"{z:03d}" for z in rng.integers(0, 1000, n_users)],
        },
        schema=USERS,
    )
    items = pa.table(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": ["t"] * n_items,
            "year": pa.array(rng.integers(1920, 2001, n_items), pa.int32()),
            "genres": [list(rng.choice(genres, rng.integers(1, 4), replace=False)) for _ in range(n_items)],
        },
        schema=ITEMS,
    )
    counts = np.maximum(np.round(np.exp(rng.normal(np.log(96), 0.95, n_users))), 20).astype(np.int64)
    u = np.repeat(np.arange(n_users), counts)
    events = pa.table(
        {
            "user_id": pa.array(np.char.add("u", u.astype(str))),
            "item_id": pa.array(np.char.add("i", rng.integers(0, n_items, len(u)).astype(str))),
            "ts": pa.array(rng.integers(0, 10**15, len(u)), pa.int64()).cast(INTERACTIONS.field("ts").type),
            "label": pa.array((rng.random(len(u)) < 0.55).astype(np.float32)),
            "rating": pa.array(np.full(len(u), 4.0, np.float32)),
        },
        schema=INTERACTIONS,
    )
    return users, items, events


def load(data: str | None, n_users: int, seed: int) -> tuple[str, pa.Table, pa.Table, pa.Table]:
    if data and Path(data, "interactions.parquet").exists():
        from pipeline.training.train_job import load_data

        d = load_data(data)
        return f"ML-1M counts from {data}", d.users, d.items, d.interactions
    return "lognormal fit of ML-1M counts (no --data)", *synthetic_data(n_users, seed)


class MeluLocal(nn.Module):
    """The meta block as a plain module whose weights are swapped per user (MeLU style)."""

    def __init__(self, in_dim: int, hidden: int, out: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def per_user_loop(
    model: TwoBlockModel,
    tables: FeatureTables,
    tasks: TaskSet,
    cfg: MamlConfig,
    users: np.ndarray,
    melu: bool = True,
) -> np.ndarray:
    """Adapt `users` one at a time with module forwards and plain autograd: the same math
    as `maml.adapt` in inference (K first-order steps of size cfg.inner_lr on the mean
    support loss). `melu=True` runs the whole model forward (user features, item tower,
    local layers, global block) at every step, as MeLU's local update does; `melu=False`
    computes the user and item inputs once per user (a leaner loop)."""
    w = model.meta.weights
    local = MeluLocal(w["w1"].shape[1], w["w1"].shape[0], w["w2"].shape[0])
    init = {"fc1.weight": w["w1"], "fc1.bias": w["b1"], "fc2.weight": w["w2"], "fc2.bias": w["b2"]}
    out = np.zeros((len(users), model.cfg.embedding_dim), dtype=np.float32)
    block = tasks.support
    for row, u in enumerate(users):
        local.load_state_dict({k: t.detach() for k, t in init.items()})  # MeLU: fast weights into the module
        user_enc = take(tables.users, torch.from_numpy(tasks.user_rows[u : u + 1]))
        item_enc = take(
            tables.items, torch.from_numpy(block.item_rows[block.offsets[u] : block.offsets[u + 1]])
        )
        y = torch.from_numpy(block.target[block.offsets[u] : block.offsets[u + 1]])

        def inputs() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                v = model.item_tower(item_enc)  # (n, item_dim)
                every = torch.ones(1, len(y), dtype=torch.bool)
                return model.with_history(
                    model.user_inputs(user_enc), v[None], y[None], every
                ), v  # (1, in_dim)

        x, v = inputs()
        for _ in range(cfg.inner_steps if len(y) else 0):
            if melu:
                x, v = inputs()
            loss = pointwise_loss(model.global_block(local(x), v), y, model.cfg.objective).mean()
            grads = torch.autograd.grad(loss, list(local.parameters()))
            with torch.no_grad():
                for p, g in zip(local.parameters(), grads):
                    p -= cfg.inner_lr * g
        with torch.no_grad():
            out[row] = local(x)[0].numpy()
    return out


def inner_loop_flops(model: TwoBlockModel, n_users: int, n_events: int, steps: int) -> tuple[float, float]:
    """(FLOPs as executed, FLOPs of the textbook per-event formulation) of K inner steps
    plus the final embedding, for the given users and valid support events; 2 per
    multiply-add, elementwise work (ReLU, losses, updates) not counted.

    As executed (`GlobalBlock.prepare/score`, `maml._activation_embeddings`): per event
    and step, the first layer's (P e * v) term and the remaining MLP layers forward, and
    their backward to e (input gradients only: as many FLOPs as the forward); the
    item/context terms of the first layer once per event (not per step); per user and
    step, W_e e and P e forward and backward. The meta block is never copied per user:
    W1 x and its step reach once per user, then per step k its second layer and that
    layer's backward with k rank-one corrections each, and the final second layer. The
    textbook count runs the whole first layer and the projection P e for every event and
    a forward and backward (weight gradients) of per-user meta-block weight copies.
    """
    cfg, w = model.cfg, model.meta.weights
    f_in, hidden, d = w["w1"].shape[1], w["w1"].shape[0], w["w2"].shape[0]
    h1, i_dim = cfg.global_hidden[0], cfg.item_dim
    rest = sum(a * b for a, b in zip([*cfg.global_hidden], [*cfg.global_hidden[1:], 1]))
    meta_fwd = 2 * (f_in * hidden + hidden * d)
    per_user = 2 * (d * h1 + d * i_dim)  # W_e e and P e, forward
    event = 2 * (i_dim * h1 + rest)  # (P e * v) W_p and the layers after the first, forward
    layer2 = 2 * hidden * d
    meta = (
        2 * 2 * f_in * hidden + layer2 * (steps + 1) ** 2
    )  # W1 x, reach; step k: 2(k+1) layer2s; final: K+1
    executed = (
        steps * (n_events * 2 * event + n_users * 2 * per_user) + n_events * 2 * i_dim * h1 + n_users * meta
    )
    textbook_event = 2 * (d * i_dim + (d + 2 * i_dim) * h1 + rest)
    textbook = steps * (n_events * 2 * textbook_event + n_users * 3 * meta_fwd) + n_users * meta_fwd
    return float(executed), float(textbook)


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """The float32 GFLOP/s of an n x n matmul on `device` (best of `repeats`)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def run() -> None:
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    return 2 * n**3 / timed(run, repeats) / 1e9


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="prepared ML-1M folder (interactions/users/items parquet)")
    ap.add_argument("--users", type=int, default=4096, help="users adapted by the batched loop")
    ap.add_argument("--loop-users", type=int, default=200, help="users adapted by the per-user loop")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timings per measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=DEVICES, default="cpu", help="where the batched loop runs")
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source, users_t, items_t, events = load(args.data, args.users, args.seed)
    spec = fit_spec(movielens_template(), users_t, items_t)
    tables = FeatureTables.build(spec, users_t, items_t)
    tasks = build_tasks(events, None, tables, spec, max_support=CAP)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(tasks), size=min(args.users, len(tasks)), replace=False)
    sub = cut(tasks, pick, tasks.support.lengths[pick], max_support=CAP, max_query=0)  # support only
    model = TwoBlockModel(spec, ModelConfig()).eval()
    on_device = copy.deepcopy(model).to(device), tables.to(device)  # the batched loop's, moved once
    lengths = sub.support.lengths
    peak = matmul_peak(device)
    print(
        f"support sizes: {source}; users {len(sub)}, mean {lengths.mean():.1f}, median "
        f"{np.median(lengths):.0f}, "
        f"max {lengths.max()}; threads {args.threads}; batch {args.batch_size}; batched loop on {device} "
        "(per-user loops on the CPU)"
    )
    print(f"matmul peak on {device} (float32 2048^3): {peak:.1f} GFLOP/s\n")
    print(
        f"{'K':>2} {'batched users/s':>15} {'MeLU loop users/s':>17} {'speedup':>8} "
        f"{'lean loop users/s':>17} "
        f"{'speedup':>8} {'GFLOP/s':>8} {'of peak':>8} {'max |diff|':>10}"
    )
    results = {}
    loop_users = np.arange(min(args.loop_users, len(sub)))
    for k in (1, 3, 5):
        cfg = MamlConfig(inner_steps=k, max_support=CAP)
        batched_s = timed(lambda: embed_users(*on_device, sub, cfg, args.batch_size), args.repeats)
        melu_s = timed(lambda: per_user_loop(model, tables, sub, cfg, loop_users), args.repeats)
        lean_s = timed(lambda: per_user_loop(model, tables, sub, cfg, loop_users, melu=False), args.repeats)
        diff = np.abs(
            embed_users(*on_device, sub, cfg, args.batch_size)[loop_users]
            - per_user_loop(model, tables, sub, cfg, loop_users)
        ).max()
        flops, textbook = inner_loop_flops(model, len(sub), int(lengths.sum()), k)
        gflops = flops / batched_s / 1e9
        rate_b, rate_m, rate_l = (
            len(sub) / batched_s,
            len(loop_users) / melu_s,
            len(loop_users) / lean_s,
        )  # users/s
        results[k] = (rate_b / rate_m, rate_b, gflops / peak)
        print(
            f"{k:>2} {rate_b:>15.0f} {rate_m:>17.1f} {rate_b / rate_m:>7.1f}x {rate_l:>17.1f} "
            f"{rate_b / rate_l:>7.1f}x {gflops:>8.2f} {gflops / peak:>7.1%} {diff:>10.2e}"
        )
    print(
        "\nGFLOP/s: the inner loop's FLOPs as executed (inner_loop_flops; the textbook per-event formulation"
    )
    print(
        f"would need {textbook / flops:.1f}x more: item terms are computed once, user terms once per user) "
        "over the"
    )
    print(
        "whole embed_users time (padding, feature lookups and the item tower included). Why it is below the "
        "peak:"
    )
    print(
        "per event the matrices are skinny (inner dimensions 32-64), which GEMM kernels run far below a large"
    )
    print(
        "square matmul, and ReLU, its backward mask and the broadcast adds stream (users, slots, 64) "
        "activations"
    )
    print(
        "through memory with no FLOPs. The meta block adapts without per-user weight copies (rank-one updates"
    )
    print(
        "applied to vectors), so nearly all FLOPs are the per-event global-block GEMMs. Speedups: batched vs "
        "the"
    )
    print("MeLU-way loop (target >= 20x at K=3; this is the summary's), and vs the lean loop.")
    speedup, rate, frac = results[3]
    print(f"summary speedup_k3={speedup:.1f} users_per_s_k3={rate:.0f} peak_fraction={frac:.3f}")


if __name__ == "__main__":
    main()
