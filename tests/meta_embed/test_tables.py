"""Parquet I/O held to the schemas, the data-folder lookup and the id-uniqueness check."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from meta_embed.tables import (
    DEAD_LETTER,
    INTERACTIONS,
    TS_TYPE,
    USERS,
    CorruptInputError,
    SchemaError,
    data_table,
    read_table,
    unique_ids,
    write_dead_letter,
    write_table,
)

UTC = dt.UTC


def events(n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "user_id": [f"u{i % 3}" for i in range(start, start + n)],
            "item_id": [f"i{i}" for i in range(start, start + n)],
            "ts": pa.array(
                [dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(days=i) for i in range(start, start + n)],
                TS_TYPE,
            ),
            "label": pa.array([float(i % 2) for i in range(start, start + n)], pa.float32()),
            "rating": pa.array([float(1 + i % 5) for i in range(start, start + n)], pa.float32()),
        }
    )


def test_read_file_directory_and_glob(tmp_path):
    write_table(events(4), tmp_path / "one.parquet", INTERACTIONS)
    write_table(events(3, 4), tmp_path / "shards" / "part-00001.parquet", INTERACTIONS)
    write_table(events(4), tmp_path / "shards" / "part-00000.parquet", INTERACTIONS)
    (tmp_path / "shards" / "_SUCCESS").write_text("")
    assert read_table(tmp_path / "one.parquet", INTERACTIONS).to_pylist() == events(4).to_pylist()
    both = read_table(tmp_path / "shards", INTERACTIONS)
    assert both["item_id"].to_pylist() == [f"i{i}" for i in range(7)]  # shards in name order
    assert read_table(str(tmp_path / "shards" / "part-*.parquet"), INTERACTIONS).num_rows == 7
    sub = read_table(
        tmp_path / "shards",
        INTERACTIONS,
        columns=["user_id", "ts"],
        filter=pc.field("ts") >= pa.scalar(dt.datetime(2020, 1, 6, tzinfo=UTC), TS_TYPE),
    )
    assert sub.column_names == ["user_id", "ts"] and sub.num_rows == 2


def test_extra_columns_follow_the_schema_columns(tmp_path):
    table = events(2).append_column("device", pa.array(["ios", "web"]))
    write_table(table.select(["device"] + INTERACTIONS.names), tmp_path / "x.parquet", INTERACTIONS)
    assert read_table(tmp_path / "x.parquet", INTERACTIONS).column_names == INTERACTIONS.names + ["device"]


def test_schema_mismatch_names_file_and_column(tmp_path):
    pq.write_table(events(2).drop_columns(["label"]), tmp_path / "a.parquet")
    with pytest.raises(SchemaError, match=r"a\.parquet: missing column 'label'"):
        read_table(tmp_path / "a.parquet", INTERACTIONS)
    pq.write_table(events(2).set_column(0, "user_id", pa.array([1, 2])), tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match=r"b\.parquet: column 'user_id' has type int64"):
        read_table(tmp_path / "b.parquet", INTERACTIONS)


def test_truncated_file_error_names_the_path(tmp_path):
    shards = tmp_path / "shards"
    write_table(events(50), shards / "part-00000.parquet", INTERACTIONS)
    data = (shards / "part-00000.parquet").read_bytes()
    (shards / "part-00001.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptInputError, match=r"part-00001\.parquet"):
        read_table(shards, INTERACTIONS)
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(CorruptInputError, match=r"empty\.parquet"):
        read_table(tmp_path / "empty.parquet", INTERACTIONS)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_table(tmp_path / "nothing-here", INTERACTIONS)


def test_write_table_casts_and_refuses_nulls(tmp_path):
    loose = pa.table(
        {
            "user_id": pa.array(["a"], pa.large_string()),
            "age": pa.array([30], pa.int64()),
            "gender": ["F"],
            "occupation": ["x"],
            "zip_prefix": ["123"],
        }
    )
    path = write_table(loose, tmp_path / "u.parquet", USERS)
    assert pq.read_schema(path).field("age").type == pa.int32()
    assert pq.read_schema(path).field("user_id").type == pa.string()
    assert [p.name for p in tmp_path.iterdir()] == ["u.parquet"]  # no temporary left behind
    with pytest.raises(SchemaError, match="'user_id' holds 1 nulls"):
        write_table(
            loose.set_column(0, "user_id", pa.array([None], pa.string())), tmp_path / "v.parquet", USERS
        )
    with pytest.raises(SchemaError, match="missing column 'zip_prefix'"):
        write_table(loose.drop_columns(["zip_prefix"]), tmp_path / "w.parquet", USERS)


def test_dead_letter_written_even_when_empty(tmp_path):
    empty = pq.read_table(write_dead_letter([], tmp_path / "d.parquet"))
    assert empty.num_rows == 0 and empty.schema.equals(DEAD_LETTER)
    rows = [{"source": "s", "row": 3, "reason": "duplicate", "record": "{}"}]
    assert pq.read_table(write_dead_letter(rows, tmp_path / "e.parquet")).to_pylist() == rows


def test_data_table_finds_a_file_or_a_shard_folder(tmp_path):
    (tmp_path / "a" / "interactions").mkdir(parents=True)
    (tmp_path / "a" / "users.parquet").touch()
    assert data_table(tmp_path / "a", "interactions") == tmp_path / "a" / "interactions"
    assert data_table(tmp_path / "a", "users") == tmp_path / "a" / "users.parquet"
    with pytest.raises(FileNotFoundError, match=r"neither items\.parquet nor items/.*data prepare"):
        data_table(tmp_path / "a", "items")


def test_unique_ids_names_the_repeated_id_and_the_table():
    assert unique_ids(pa.chunked_array([["a", "b"], ["c"]]), "users table").to_pylist() == ["a", "b", "c"]
    with pytest.raises(
        ValueError, match=r"users table 'user_id': id 'b' appears more than once \(1 ids repeat\)"
    ):
        unique_ids(pa.array(["a", "b", "c", "b"]), "users table 'user_id'")
    with pytest.raises(ValueError, match="1 rows have no id"):
        unique_ids(pa.array(["a", None]), "items")
