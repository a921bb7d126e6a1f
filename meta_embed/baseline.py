"""Wide-and-deep ID baseline: the model a meta-embedding system has to beat.

- Wide: a linear model over the user id, the item id and crossed features
  (by default user id x genre, age x genre, item id x age); its weights start at zero.
- Deep: embeddings of the user id, the item id and the side features of the
  `FeatureSpec` (everything but the id columns), concatenated -> MLP; embeddings start
  small (std `init_std`), so an untrained model predicts the base rate, not noise.

Ids get a vocabulary from the training events; an id outside it maps to index 0, the
out-of-vocabulary (OOV) bucket. During training a fraction `oov_rate` of events have
their ids replaced by OOV, so that the OOV bucket (and its crosses) learns what an
unseen user or item looks like instead of staying at its initial value.

Training is plain mini-batch Adam with early stopping on a validation table (AUC for
`binary`, negative MAE for `regression`), on `WideDeepConfig.device`; the fitted model
comes back on the CPU. The model returns logits (or ratings).
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from meta_embed.config import WideDeepConfig
from meta_embed.devices import CPU, device_of, resolve_device
from meta_embed.features import Column, FeatureSpec, take
from meta_embed.metrics import auc
from meta_embed.tasks import FeatureTables

ID_COLUMNS = ("user_id", "item_id")


@dataclasses.dataclass(frozen=True)
class IdVocab:
    """Ids seen in training; index k + 1 is ids[k], index 0 is the OOV bucket."""

    ids: pa.Array

    @classmethod
    def fit(cls, ids: pa.Array | pa.ChunkedArray) -> IdVocab:
        return cls(pc.unique(ids).cast(pa.string()).sort())

    def index(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        idx = pc.index_in(ids.cast(pa.string()), value_set=self.ids)
        return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    @property
    def size(self) -> int:
        return len(self.ids) + 1


def side_spec(spec: FeatureSpec) -> FeatureSpec:
    """`spec` without the id columns (the baseline embeds ids through its own vocabularies)."""
    keep = lambda cols: tuple(c for c in cols if c.name not in (spec.user_key, spec.item_key))  # noqa: E731
    return dataclasses.replace(spec, user=keep(spec.user), item=keep(spec.item), context=())


@dataclasses.dataclass(frozen=True)
class EventIndex:
    """Events as model inputs: id indices (0 = OOV) and feature-table rows."""

    user: np.ndarray
    item: np.ndarray
    user_row: np.ndarray
    item_row: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def slice(self, idx: np.ndarray) -> EventIndex:
        return EventIndex(self.user[idx], self.item[idx], self.user_row[idx], self.item_row[idx])


class WideDeep(nn.Module):
    """logit(u, i) = bias + wide(u, i) + MLP([emb(user id), emb(item id), side features]);
    without user ids (`WideDeepConfig.user_ids` False) no term of the logit reads the user id."""

    def __init__(
        self, cfg: WideDeepConfig, spec: FeatureSpec, tables: FeatureTables, users: IdVocab, items: IdVocab
    ):
        super().__init__()
        self.cfg, self.spec, self.tables, self.users, self.items = cfg, spec, tables, users, items
        self.columns: dict[str, Column] = {c.name: c for c in spec.user + spec.item}
        self.card = {"user_id": users.size, "item_id": items.size} | {
            n: c.cardinality for n, c in self.columns.items()
        }
        for a, b in cfg.crosses:
            if (
                a not in self.card
                or b not in self.card
                or self.columns.get(a, Column(a, "vocab")).kind == "bag"
            ):
                raise ValueError(
                    f"WideDeepConfig.crosses: ({a!r}, {b!r}) must name id or feature columns of the spec "
                    f"({sorted(self.card)}); only the second may be a bag"
                )
        self.wide = nn.ModuleDict({k: nn.Embedding(self._wide_rows(k), 1) for k in self._wide_keys()})
        for table in self.wide.values():
            nn.init.zeros_(table.weight)
        self.user_emb = nn.Embedding(users.size, cfg.embedding_dim) if cfg.user_ids else None
        self.item_emb = nn.Embedding(items.size, cfg.embedding_dim)
        self.side = nn.ModuleDict({n: nn.Embedding(c.cardinality, c.dim) for n, c in self.columns.items()})
        for table in [self.user_emb, self.item_emb, *self.side.values()]:
            if table is not None:
                nn.init.normal_(table.weight, std=cfg.init_std)
        ids = 2 if cfg.user_ids else 1
        sizes = [ids * cfg.embedding_dim + sum(c.dim for c in self.columns.values()), *cfg.hidden, 1]
        layers: list[nn.Module] = []
        for k in range(len(sizes) - 1):
            layers += [nn.Linear(sizes[k], sizes[k + 1]), nn.ReLU()]
        self.mlp = nn.Sequential(*layers[:-1])
        self.bias = nn.Parameter(torch.zeros(()))

    def to_device(self, device: torch.device) -> WideDeep:
        """Move the model and the feature tables it reads to `device` (in place); returns it."""
        self.tables = self.tables.to(device)
        return self.to(device)

    def _wide_keys(self) -> list[str]:
        ids = ["user_id", "item_id"] if self.cfg.user_ids else ["item_id"]
        return ids + [f"{a}*{b}" for a, b in self.cfg.crosses]

    def _wide_rows(self, key: str) -> int:
        if "*" not in key:
            return self.card[key]
        a, b = key.split("*")
        return min(self.card[a] * self.card[b], self.cfg.max_cross_rows)

    def _inputs(self, ev: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = take(self.tables.users, ev["user_row"]) | take(self.tables.items, ev["item_row"])
        return {"user_id": ev["user"], "item_id": ev["item"]} | {n: feats[n] for n in self.columns}

    def _embed(self, name: str, idx: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
        vec = table(idx)
        if idx.dim() == 2:  # bag (batch, L): mean over present values, 0 = padding
            mask = (idx > 0).unsqueeze(-1).to(vec.dtype)
            vec = (vec * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return vec

    def forward(self, ev: dict[str, torch.Tensor]) -> torch.Tensor:
        """ev: user, item (batch,) id indices; user_row, item_row (batch,) feature rows -> logits (batch,)."""
        x = self._inputs(ev)
        wide = self.wide["item_id"](x["item_id"]).squeeze(-1)
        if self.user_emb is not None:
            wide = wide + self.wide["user_id"](x["user_id"]).squeeze(-1)
        for a, b in self.cfg.crosses:
            rows = self._wide_rows(f"{a}*{b}")
            ib = x[b]
            ia = x[a].unsqueeze(-1) if ib.dim() == 2 else x[a]
            w = self.wide[f"{a}*{b}"]((ia * self.card[b] + ib) % rows).squeeze(-1)  # (batch,) or (batch, L)
            wide = wide + ((w * (ib > 0)).sum(-1) if ib.dim() == 2 else w)
        deep_in = [self.item_emb(x["item_id"])] if self.user_emb is None else [
            self.user_emb(x["user_id"]), self.item_emb(x["item_id"])]  # fmt: skip
        deep_in += [self._embed(n, x[n], self.side[n]) for n in self.columns]
        return self.bias + wide + self.mlp(torch.cat(deep_in, dim=-1)).squeeze(-1)

    def user_bytes(self) -> int:
        """Per-user parameters served (float32): id embedding, wide id weight, crosses keyed by user id."""
        if not self.cfg.user_ids:
            return 0
        per_user = self.cfg.embedding_dim + 1
        per_user += sum(self.card[b] for a, b in self.cfg.crosses if a == "user_id")
        return 4 * per_user


def index_events(model: WideDeep, events: pa.Table) -> EventIndex:
    """Inputs of `events` for `model`: vocabulary indices (OOV = 0) and feature rows."""
    users, items = events.column(model.spec.user_key), events.column(model.spec.item_key)
    return EventIndex(
        model.users.index(users),
        model.items.index(items),
        model.tables.user_rows(users),
        model.tables.item_rows(items),
    )


def _tensors(ev: EventIndex, device: torch.device = CPU) -> dict[str, torch.Tensor]:
    return {
        k: torch.as_tensor(np.ascontiguousarray(v), device=device) for k, v in dataclasses.asdict(ev).items()
    }


def predict(model: WideDeep, ev: EventIndex, batch_size: int = 1 << 16) -> np.ndarray:
    """Logits (binary) or ratings (regression) of the events, float32 (events,), computed
    on the model's device."""
    model.eval()
    out = np.empty(len(ev), dtype=np.float32)
    device = device_of(model)
    with torch.no_grad():
        for start in range(0, len(ev), batch_size):
            part = ev.slice(np.arange(start, min(start + batch_size, len(ev))))
            out[start : start + len(part)] = model(_tensors(part, device)).cpu().numpy()
    return out


def score(cfg: WideDeepConfig, pred: np.ndarray, target: np.ndarray) -> float:
    """Validation score, higher is better: AUC (binary) or minus MAE (regression)."""
    return auc(pred, target > 0.5) if cfg.objective == "binary" else -float(np.abs(pred - target).mean())


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A trained baseline and how it got there."""

    model: WideDeep
    epochs: int  # epochs of the returned weights
    val_score: float | None  # AUC or -MAE on the validation table at `epochs`
    history: tuple[dict, ...]  # per epoch: epoch, train_loss, val_score, seconds
    seconds: float


def build(
    cfg: WideDeepConfig, spec: FeatureSpec, users: pa.Table, items: pa.Table, train: pa.Table
) -> WideDeep:
    """A fresh model whose id vocabularies are the ids of the training events."""
    torch.manual_seed(cfg.seed)
    side = side_spec(spec)
    tables = FeatureTables.build(side, users, items)
    model = WideDeep(
        cfg, side, tables, IdVocab.fit(train.column(spec.user_key)), IdVocab.fit(train.column(spec.item_key))
    )
    return model


def _target(cfg: WideDeepConfig, table: pa.Table) -> np.ndarray:
    col = "label" if cfg.objective == "binary" else "rating"
    return table.column(col).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32)


def _epoch(
    model: WideDeep, opt: torch.optim.Optimizer, ev: EventIndex, y: np.ndarray, rng: np.random.Generator
) -> float:
    cfg, device = model.cfg, device_of(model)
    model.train()
    order = rng.permutation(len(ev))
    loss_fn = nn.BCEWithLogitsLoss() if cfg.objective == "binary" else nn.MSELoss()
    total = 0.0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        batch = _tensors(ev.slice(idx), device)
        if cfg.oov_rate > 0:  # id dropout: teach the OOV buckets what an unseen id looks like
            for key in ("user", "item"):
                drop = torch.as_tensor(rng.random(len(idx)) < cfg.oov_rate, device=device)
                batch[key] = batch[key].masked_fill(drop, 0)
        loss = loss_fn(model(batch), torch.as_tensor(y[idx], device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / max(len(order), 1)


def fit(
    cfg: WideDeepConfig,
    spec: FeatureSpec,
    users: pa.Table,
    items: pa.Table,
    train: pa.Table,
    valid: pa.Table | None = None,
    epochs: int | None = None,
    log=None,
) -> FitResult:
    """Train on `train`, on `cfg.device`; with `valid`, stop early on its score and keep the
    best epoch, otherwise train exactly `epochs` (default cfg.max_epochs) epochs. The model
    comes back on the CPU."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    model = build(cfg, spec, users, items, train).to_device(device)  # built and seeded on the CPU
    ev, y = index_events(model, train), _target(cfg, train)
    base = float(y.mean()) if len(y) else 0.0
    with torch.no_grad():
        model.bias.fill_(
            float(np.log(base / (1 - base))) if cfg.objective == "binary" and 0 < base < 1 else base
        )
    val = (index_events(model, valid), _target(cfg, valid)) if valid is not None else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    history: list[dict] = []
    best = (-np.inf, 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, (epochs or cfg.max_epochs) + 1):
        t = time.perf_counter()
        loss = _epoch(model, opt, ev, y, rng)
        vs = score(cfg, predict(model, val[0]), val[1]) if val is not None else None
        history.append(
            {"epoch": epoch, "train_loss": loss, "val_score": vs, "seconds": time.perf_counter() - t}
        )
        if log is not None:
            log(history[-1])
        if val is None:
            continue
        if vs > best[0]:
            best = (vs, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            break
    if val is not None:
        model.load_state_dict(best[2])
    model.to_device(CPU).eval()
    return FitResult(
        model,
        best[1] if val is not None else len(history),
        best[0] if val is not None else None,
        tuple(history),
        time.perf_counter() - start,
    )
