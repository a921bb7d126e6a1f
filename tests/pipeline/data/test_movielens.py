"""MovieLens loaders on tiny files in the two GroupLens and the two RecBole layouts."""

from __future__ import annotations

import datetime as dt

import pytest

from meta_embed.tables import INTERACTIONS, ITEMS, USERS, SchemaError
from pipeline.data.movielens import detect_layout, load_grouplens, load_recbole

UTC = dt.UTC


def by_id(table, key):
    return {row[key]: row for row in table.to_pylist()}


def check_schemas(ml):
    assert ml.users.schema.equals(USERS, check_metadata=False)
    assert ml.items.schema.equals(ITEMS, check_metadata=False)
    assert ml.interactions.schema.equals(INTERACTIONS, check_metadata=False)


def test_grouplens_100k(ml100k_dir):
    ml = load_grouplens(ml100k_dir)
    check_schemas(ml)
    assert ml.layout == "ml-100k"
    assert by_id(ml.users, "user_id") == {
        "1": {"user_id": "1", "age": 24, "gender": "M", "occupation": "technician", "zip_prefix": "857"},
        "2": {"user_id": "2", "age": 53, "gender": "F", "occupation": "other", "zip_prefix": "T8H"},
        "3": {"user_id": "3", "age": 23, "gender": "M", "occupation": "writer", "zip_prefix": "320"},
        "4": {"user_id": "4", "age": 33, "gender": "F", "occupation": "other", "zip_prefix": None},
    }
    assert by_id(ml.items, "item_id") == {
        "10": {
            "item_id": "10",
            "title": "Toy Story",
            "year": 1995,
            "genres": ["Animation", "Children's", "Comedy"],
        },
        "20": {"item_id": "20", "title": "Cité des enfants perdus, La", "year": 1995, "genres": ["Sci-Fi"]},
        "30": {"item_id": "30", "title": "unknown", "year": None, "genres": ["unknown"]},
    }
    first = ml.interactions.to_pylist()[0]
    assert first == {
        "user_id": "1",
        "item_id": "10",
        "ts": dt.datetime(1997, 12, 4, 15, 55, 49, tzinfo=UTC),
        "label": 1.0,
        "rating": 5.0,
    }
    assert ml.interactions["label"].to_pylist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # rating >= 4
    assert ml.dead_counts["malformed_row"] == 1 and ml.dead_counts["duplicate"] == 1
    dead = {(row["reason"], row["row"]) for row in ml.dead_letter.to_pylist()}
    assert dead == {("malformed_row", 7), ("duplicate", 8)}  # 1-based line numbers of u.data


def test_grouplens_100k_without_genre_file_uses_the_fixed_list(ml100k_dir):
    (ml100k_dir / "u.genre").unlink()
    ml = load_grouplens(ml100k_dir)
    assert by_id(ml.items, "item_id")["10"]["genres"] == ["Animation", "Children's", "Comedy"]


def test_grouplens_1m(ml1m_dir):
    ml = load_grouplens(ml1m_dir)
    check_schemas(ml)
    assert ml.layout == "ml-1m"
    assert by_id(ml.users, "user_id") == {
        "1": {"user_id": "1", "age": 1, "gender": "F", "occupation": "K-12 student", "zip_prefix": "480"},
        "2": {"user_id": "2", "age": 56, "gender": "M", "occupation": "self-employed", "zip_prefix": "700"},
    }
    assert by_id(ml.items, "item_id")["2"] == {
        "item_id": "2",
        "title": "Misérables, Les",
        "year": 1995,
        "genres": ["Drama", "Musical"],
    }
    assert ml.interactions.num_rows == 3 and ml.dead_letter.num_rows == 0


def test_recbole_100k_reads_headers_by_name(recbole_100k):
    ml = load_recbole("ml-100k", recbole_100k)
    check_schemas(ml)
    assert by_id(ml.users, "user_id")["2"] == {
        "user_id": "2",
        "age": 53,
        "gender": "F",
        "occupation": "other",
        "zip_prefix": "024",
    }
    items = by_id(ml.items, "item_id")
    assert items["10"]["genres"] == ["Animation", "Children's", "Comedy"] and items["10"]["year"] == 1995
    assert items["20"] == {
        "item_id": "20",
        "title": "Land Before Time III",
        "year": 1995,
        "genres": ["Animation"],
    }
    assert ml.interactions.to_pylist()[1] == {
        "user_id": "2",
        "item_id": "10",
        "label": 0.0,
        "rating": 2.0,
        "ts": dt.datetime(1997, 12, 4, 15, 55, 51, tzinfo=UTC),
    }


def test_recbole_1m_strips_prefixes_and_maps_codes(recbole_1m):
    ml = load_recbole("ml-1m", recbole_1m)
    check_schemas(ml)
    assert by_id(ml.users, "user_id")["2"] == {
        "user_id": "2",
        "age": 56,
        "gender": "M",
        "occupation": "self-employed",
        "zip_prefix": "700",
    }
    assert ml.interactions["user_id"].to_pylist() == ["1", "2"]
    assert ml.interactions["item_id"].to_pylist() == ["Toy Story (1995)", "Misérables, Les (1995)"]
    assert by_id(ml.items, "item_id")["Misérables, Les (1995)"]["title"] == "Misérables, Les"
    assert ml.dead_letter.num_rows == 0


def test_recbole_missing_column_is_named(recbole_100k):
    recbole_100k["inter"] = recbole_100k["inter"].replace(b"rating:float", b"score:float")
    with pytest.raises(SchemaError, match=r"ml-100k\.inter: header lacks columns \['rating'\]"):
        load_recbole("ml-100k", recbole_100k)


def test_layout_detection(tmp_path, ml100k_dir, ml1m_dir):
    assert detect_layout(ml100k_dir) == "ml-100k" and detect_layout(ml1m_dir) == "ml-1m"
    with pytest.raises(FileNotFoundError, match=r"u\.data.*ratings\.dat, users\.dat, movies\.dat"):
        detect_layout(tmp_path)
    (ml1m_dir / "users.dat").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['users\.dat'\]"):
        load_grouplens(ml1m_dir)
