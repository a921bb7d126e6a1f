"""Lenient parsing of text columns and the validation that routes bad interaction
records to a dead-letter table with a reason, instead of failing on them or silently
dropping them. Vectorized with pyarrow.compute; a Python loop runs over bad rows only.

Every stage that ingests raw events (prepare, the refresh job) calls
`validate_interactions`; it is pure (no global state, no printing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from meta_embed.tables import DEAD_LETTER, INTERACTIONS, TS_TYPE, SchemaError, conform

REASONS: tuple[str, ...] = (
    "null_user_id",
    "null_item_id",
    "null_ts",
    "unparseable_ts",
    "ts_out_of_range",
    "bad_rating",
    "rating_out_of_domain",
    "nonfinite_label",
    "label_out_of_domain",
    "duplicate",
)
"""Dead-letter reasons of `validate_interactions`, in priority order: a record failing
several checks is reported once, under the first reason that applies."""

RATING_DOMAIN = (0.5, 5.0)
"""The star scale ratings must lie on (MovieLens: 1-5, half stars in later releases)."""

TS_DOMAIN_US = (-2_208_988_800_000_000, 253_402_300_799_999_999)
"""Event times must lie in [1900-01-01, 9999-12-31T23:59:59.999999] UTC (µs since the epoch)."""

_FLOAT_RE = r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|(?i:nan|inf|infinity))$"
_ISO_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?"
_ZONE_RE = r"(Z|[+-]\d{2}:?\d{2})$"


class Validated(NamedTuple):
    """Result of `validate_interactions`: unpacks as `good, dead, counts`."""

    good: pa.Table  # INTERACTIONS columns (+ any extra context columns)
    dead: pa.Table  # DEAD_LETTER schema
    counts: dict[str, int]  # reason -> number of dead-lettered rows, every reason present


def _cast_lenient(arr: pa.Array, typ: pa.DataType) -> pa.Array:
    """Cast, turning the elements that fail into nulls (bisects only when a cast fails)."""
    try:
        return pc.cast(arr, typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) <= 1:
            return pa.nulls(len(arr), typ)
        mid = len(arr) // 2
        return pa.concat_arrays([_cast_lenient(arr[:mid], typ), _cast_lenient(arr[mid:], typ)])


def clean_text(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Text trimmed of surrounding whitespace, empty text made null: the one rule for every
    id column (interactions, users, items) and every categorical value."""
    arr = _as_array(arr)
    trimmed = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(pc.utf8_length(trimmed), 0), pa.scalar(None, pa.string()), trimmed)


def _as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def parse_float(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """float64 from numbers, booleans or text; blank or unparseable text becomes null
    ('nan' and 'inf' parse to NaN and inf)."""
    arr = _as_array(col)
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.float64())
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type):
        return pc.cast(arr, pa.float64())
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        text = clean_text(pc.cast(arr, pa.string()))
        ok = pc.fill_null(pc.match_substring_regex(text, _FLOAT_RE), False)
        return _cast_lenient(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64())
    raise SchemaError(f"cannot read numbers from a column of type {arr.type}")


def _seconds_to_ts(seconds: np.ndarray) -> pa.Array:
    ok = np.isfinite(seconds) & (np.abs(seconds) < 9e12)
    micros = np.where(ok, np.round(np.where(ok, seconds, 0.0) * 1e6), 0).astype(np.int64)
    return pa.array(micros, type=TS_TYPE, mask=~ok)


def parse_timestamp(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """timestamp[us, UTC] from timestamps, dates, epoch seconds (numbers or numeric text)
    or ISO-8601 text (naive text is taken as UTC); unparseable values become null."""
    arr = _as_array(col)
    typ = arr.type
    if pa.types.is_null(typ):
        return pa.nulls(len(arr), TS_TYPE)
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        if pa.types.is_timestamp(typ) and typ.tz is not None:
            return pc.cast(arr, TS_TYPE, safe=False)
        naive = pc.cast(arr, pa.timestamp("us"), safe=False)
        return pc.assume_timezone(naive, "UTC")
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return _seconds_to_ts(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False))
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise SchemaError(f"cannot read timestamps from a column of type {typ}")
    text = clean_text(pc.cast(arr, pa.string()))
    seconds = parse_float(text).to_numpy(zero_copy_only=False)  # NaN where not numeric
    micros = _seconds_to_ts(seconds)
    valid = np.isfinite(seconds) & ~np.asarray(pc.is_null(micros))
    values = np.asarray(pc.fill_null(pc.cast(micros, pa.int64()), 0)).copy()
    iso = np.asarray(pc.fill_null(pc.match_substring_regex(text, _ISO_RE), False)) & ~valid
    zoned = np.asarray(pc.fill_null(pc.match_substring_regex(text, _ZONE_RE), False))
    for rows, target in ((iso & zoned, TS_TYPE), (iso & ~zoned, pa.timestamp("us"))):
        idx = np.flatnonzero(rows)
        if idx.size:
            parsed = _cast_lenient(text.take(pa.array(idx)), target)
            values[idx] = np.asarray(pc.fill_null(pc.cast(parsed, pa.int64()), 0))
            valid[idx] = ~np.asarray(pc.is_null(parsed))
    return pa.array(values, type=TS_TYPE, mask=~valid)


def _ids(col: pa.Array) -> pa.Array:
    """Ids as strings, by `clean_text`'s rule."""
    return clean_text(pc.cast(col, pa.string()))


def _given(col: pa.Array) -> np.ndarray:
    """True where a value is present (not null, and not blank text)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = clean_text(pc.cast(col, pa.string()))
    return ~np.asarray(pc.is_null(col), dtype=bool)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def dead_letter_rows(
    table: pa.Table,
    rows: np.ndarray,
    reasons: Sequence[str],
    source: str,
    row_numbers: np.ndarray | None = None,
) -> pa.Table:
    """DEAD_LETTER rows for `table`'s rows `rows` (a loop over the bad rows only), each
    record serialized as JSON; `row` is `row_numbers[rows]` (default: `rows`)."""
    rows = np.asarray(rows, dtype=np.int64)
    reported = rows if row_numbers is None else np.asarray(row_numbers, dtype=np.int64)[rows]
    records = [
        json.dumps({k: _jsonable(v) for k, v in rec.items()}, default=str, sort_keys=True)
        for rec in table.take(pa.array(rows, type=pa.int64())).to_pylist()
    ]
    return pa.table(
        {
            "source": pa.array([source] * len(rows), pa.string()),
            "row": pa.array(reported, pa.int64()),
            "reason": pa.array(list(reasons), pa.string()),
            "record": pa.array(records, pa.string()),
        },
        schema=DEAD_LETTER,
    )


def _repeats(table: pa.Table, candidates: np.ndarray) -> np.ndarray:
    """Boolean mask over `table`: candidate rows that repeat an earlier candidate row
    exactly (over all non-nested columns)."""
    keys = [n for n in table.column_names if not pa.types.is_nested(table.schema.field(n).type)]
    idx = np.flatnonzero(candidates)
    ts = np.asarray(pc.fill_null(pc.cast(table["ts"], pa.int64()), 0))[idx]
    order = np.argsort(ts, kind="stable")
    tied = np.zeros(len(idx), bool)  # an exact repeat shares its ts: only rows with a tied ts are grouped
    eq = ts[order[1:]] == ts[order[:-1]]
    tied[order[1:][eq]] = tied[order[:-1][eq]] = True
    idx = idx[tied]
    if not len(idx):
        return np.zeros_like(candidates)
    sub = table.select(keys).take(pa.array(idx)).append_column("__row", pa.array(idx, pa.int64()))
    firsts = sub.group_by(keys, use_threads=False).aggregate([("__row", "min")])["__row_min"]
    dup = np.zeros_like(candidates)
    dup[idx] = True
    dup[np.asarray(firsts, dtype=np.int64)] = False
    return dup


def _normalize(table: pa.Table) -> tuple[pa.Table, list[np.ndarray]]:
    """`table` with INTERACTIONS types (+ extra columns), and one row mask per reason
    of REASONS but the last (duplicates are found among the rows that pass these)."""
    n = table.num_rows
    user, item = _ids(_as_array(table["user_id"])), _ids(_as_array(table["item_id"]))
    raw_ts = _as_array(table["ts"])
    ts, ts_given = parse_timestamp(raw_ts), _given(raw_ts)
    raw_rating = _as_array(table["rating"]) if "rating" in table.column_names else pa.nulls(n, pa.float64())
    rating, rating_given = parse_float(raw_rating).to_numpy(zero_copy_only=False), _given(raw_rating)
    label = parse_float(table["label"]).to_numpy(zero_copy_only=False)
    us = np.asarray(pc.fill_null(pc.cast(ts, pa.int64()), 0))
    with np.errstate(invalid="ignore"):
        off_scale = (rating < RATING_DOMAIN[0]) | (rating > RATING_DOMAIN[1])
    masks = [
        np.asarray(pc.is_null(user)),  # null_user_id
        np.asarray(pc.is_null(item)),  # null_item_id
        ~ts_given,  # null_ts
        ts_given & np.asarray(pc.is_null(ts)),  # unparseable_ts
        (us < TS_DOMAIN_US[0]) | (us > TS_DOMAIN_US[1]),  # ts_out_of_range
        rating_given & ~np.isfinite(rating),  # bad_rating
        rating_given & np.isfinite(rating) & off_scale,  # rating_out_of_domain
        ~np.isfinite(label),  # nonfinite_label
        np.isfinite(label) & (label != 0) & (label != 1),  # label_out_of_domain
    ]
    extras = [c for c in table.column_names if c not in INTERACTIONS.names]
    rating_arr = pa.array(np.where(rating_given, rating, np.nan), pa.float32(), mask=~rating_given)
    norm = pa.table(
        [user, item, ts, pa.array(label, pa.float32()), rating_arr] + [table[c] for c in extras],
        names=INTERACTIONS.names + extras,
    )
    return norm, masks


def validate_interactions(
    table: pa.Table, source: str, row_offset: int = 0, row_numbers: np.ndarray | None = None
) -> Validated:
    """Split raw interaction rows into good rows (INTERACTIONS schema) and dead letters.

    Input columns: user_id, item_id (any type, cast to string), ts (a timestamp or date,
    epoch *seconds* as number or text, or ISO-8601 text; naive means UTC), label (number
    or text), rating (optional), then any extra context columns, which pass through. A
    row is dead-lettered, with the first reason of `REASONS` that applies, when: an id
    is null or blank (ids are trimmed, see `clean_text`); ts is null/blank, unparseable or
    outside `TS_DOMAIN_US`; rating is given but unparseable, not finite or off the
    `RATING_DOMAIN` scale; label is null, NaN or inf, or not exactly 0 or 1; or it repeats an
    earlier good row exactly (the first is kept). `row` in the dead letter is
    `row_numbers[i]` when given (e.g. line numbers of a text file), else the 0-based
    row index plus `row_offset` (e.g. of a batch in a stream); `record` is the raw row
    as JSON. Vectorized; only the bad rows are visited one by one.
    """
    missing = [c for c in ("user_id", "item_id", "ts", "label") if c not in table.column_names]
    if missing:
        raise SchemaError(f"{source}: interactions lack columns {missing}; found {table.column_names}")
    n = table.num_rows
    norm, masks = _normalize(table)
    code = np.zeros(n, dtype=np.int8)  # 0 = good, k = REASONS[k - 1]
    for k in range(len(masks), 0, -1):  # the first reason that applies wins
        code[masks[k - 1]] = k
    if n:
        code[_repeats(norm, code == 0)] = len(REASONS)  # duplicate
    bad = np.flatnonzero(code)
    numbers = np.arange(n, dtype=np.int64) + row_offset if row_numbers is None else row_numbers
    dead = dead_letter_rows(table, bad, [REASONS[c - 1] for c in code[bad]], source, numbers)
    counts = dict(zip(REASONS, np.bincount(code, minlength=len(REASONS) + 1)[1:].tolist()))
    good = conform(norm.filter(pa.array(code == 0)), INTERACTIONS, source)
    return Validated(good, dead, counts)
