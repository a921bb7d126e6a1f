"""Loaders that normalize MovieLens-100K and -1M to the USERS, ITEMS and INTERACTIONS
schemas, from the official GroupLens folders or from the RecBole files shipped in
wheels (see `pipeline.data.fetch`).

Normalization: users(user_id, age, gender, occupation, zip_prefix = first 3 characters
of the zip code); ML-1M ages stay the official age-group codes (1, 18, 25, ...) and
ML-1M occupation codes become the official names. items(item_id, title without the
trailing "(YYYY)", year, genres). interactions(user_id, item_id, ts, label = 1.0 if
rating >= 4 else 0.0, rating). Note: the RecBole ML-1M files use titles such as
"Toy Story (1995)" as item ids, so their item ids differ from the GroupLens numbering
(user ids match once the "1m_" prefix is stripped). Parsing is vectorized
(pyarrow.csv + pyarrow.compute); bad rows go to the dead letter, with `row` = their
1-based line number in the file (counting non-empty lines, header included).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from meta_embed.tables import DEAD_LETTER, ITEMS, USERS, SchemaError, conform
from pipeline.data.validate import (
    REASONS,
    Validated,
    clean_text,
    dead_letter_rows,
    parse_float,
    validate_interactions,
)

ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""The genre flags of ML-100K's u.item, in column order (used when u.genre is absent)."""

ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
"""ML-1M occupation codes 0-20 (README of ml-1m), code -> name."""

GROUPLENS_FILES: dict[str, tuple[str, str, str]] = {
    "ml-100k": ("u.data", "u.user", "u.item"),
    "ml-1m": ("ratings.dat", "users.dat", "movies.dat"),
}
"""Per layout: the (interactions, users, items) files of the official archive."""

_YEAR_IN_TITLE = r"\((?P<year>\d{4})\)\s*$"


@dataclasses.dataclass(frozen=True)
class MovieLens:
    """One normalized MovieLens dataset."""

    layout: str  # "ml-100k" | "ml-1m"
    users: pa.Table  # USERS
    items: pa.Table  # ITEMS
    interactions: pa.Table  # INTERACTIONS, validated
    dead_letter: pa.Table  # DEAD_LETTER: rejected rows of all three files
    dead_counts: dict[str, int]  # reason -> rows


class Parsed(NamedTuple):
    table: pa.Table  # all-string columns
    dead: pa.Table  # DEAD_LETTER rows of malformed lines
    lines: np.ndarray  # (rows,) line number of each row of `table`


def read_text(
    data: bytes, delimiter: str, source: str, names: list[str] | None = None, encoding: str = "utf-8"
) -> Parsed:
    """Parse delimited text into all-string columns (no quoting; CRLF or LF). Without
    `names` the first line is the header. Rows with the wrong number of fields become
    dead letters (reason 'malformed_row'), and so do rows that are not valid UTF-8
    ('undecodable_row'). Line numbers are 1-based and count non-empty lines, header
    included. An empty file is an error naming it."""
    if not data.strip():
        raise SchemaError(
            f"{source}: the file is empty; expected {'a header and ' if names is None else ''}rows"
        )
    if encoding.lower().replace("_", "-") not in ("utf-8", "utf8", "ascii"):
        data = data.decode(encoding).encode("utf-8")
    data, undecodable = _mark_undecodable(data)
    if names is None and data.startswith(UNDECODABLE):
        raise SchemaError(f"{source}: line 1 (the header) is not valid UTF-8; re-save the file as UTF-8")
    if len(delimiter) > 1:
        data = data.replace(delimiter.encode(), b"\x1f")
        delimiter = "\x1f"
    skip = 0
    if names is None:  # read the header ourselves so that every column stays a string
        header, _, _ = data.partition(b"\n")
        names = [c.strip() for c in header.decode("utf-8").rstrip("\r").split(delimiter)]
        skip = 1
    bad: list[tuple[int, str]] = []

    def on_invalid(row: pcsv.InvalidRow) -> str:
        text = row.text or ""
        line = undecodable.get(text)
        number = line[0] if line else (-1 if row.number is None else row.number)
        bad.append((number, line[1] if line else text, "undecodable_row" if line else "malformed_row"))
        return "skip"

    table = pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(
            column_names=names, skip_rows=skip, use_threads=False, block_size=1 << 24
        ),
        parse_options=pcsv.ParseOptions(
            delimiter=delimiter, quote_char=False, invalid_row_handler=on_invalid
        ),
        convert_options=pcsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False, auto_dict_encode=False
        ),
    )
    skipped = np.array([n for n, _, _ in bad], dtype=np.int64)
    first = 1 + skip
    lines = np.setdiff1d(np.arange(first, first + table.num_rows + len(bad)), skipped)[: table.num_rows]
    rows = pa.table({"line": pa.array([t for _, t, _ in bad], pa.string())})
    dead = dead_letter_rows(rows, np.arange(len(bad)), [r for _, _, r in bad], source, skipped)
    return Parsed(table, dead, lines)


UNDECODABLE = b"\x1e"  # a line that is not UTF-8 is replaced by this mark and its number (a malformed row)


def _mark_undecodable(data: bytes) -> tuple[bytes, dict[str, tuple[int, str]]]:
    """`data` with every line that is not valid UTF-8 replaced by a one-field mark, and
    mark -> (line number counting non-empty lines, the line decoded with replacements)."""
    try:
        data.decode("utf-8")
        return data, {}
    except UnicodeDecodeError:
        pass
    out, marks, number = [], {}, 0
    for line in data.split(b"\n"):
        number += bool(line.strip())
        try:
            line.decode("utf-8")
            out.append(line)
        except UnicodeDecodeError:
            mark = UNDECODABLE + str(number).encode()
            marks[mark.decode()] = (number, line.decode("utf-8", errors="replace").rstrip("\r"))
            out.append(mark)
    return b"\n".join(out), marks


def _int32(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    values = parse_float(col).to_numpy(zero_copy_only=False)
    ok = np.isfinite(values) & (np.abs(values) < 2**31)
    return pa.array(np.where(ok, values, 0).astype(np.int32), pa.int32(), mask=~ok)


def _year(col: pa.ChunkedArray | pa.Array, pattern: str) -> pa.Array:
    """int32 year from the named group 'year' of `pattern`; null where it does not match."""
    return _int32(pc.struct_field(pc.extract_regex(pc.cast(col, pa.string()), pattern), "year"))


def _split_list(col: pa.ChunkedArray | pa.Array, sep: str) -> pa.ListArray:
    """list<string> from `sep`-separated text, dropping empty parts; null stays null."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lists = pc.split_pattern(arr, sep)
    flat, parents = lists.flatten(), pc.list_parent_indices(lists)
    keep = pc.not_equal(flat, "")
    counts = np.bincount(np.asarray(parents.filter(keep)), minlength=len(arr))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep), mask=pc.is_null(arr))


def _flags_to_list(flags: list[pa.ChunkedArray], names: tuple[str, ...]) -> pa.ListArray:
    """list<string> of the names whose 0/1 flag column is 1."""
    on = np.stack([np.nan_to_num(parse_float(f).to_numpy(zero_copy_only=False)) == 1 for f in flags], axis=1)
    offsets = np.concatenate([[0], np.cumsum(on.sum(axis=1))]).astype(np.int32)
    values = pa.array(np.asarray(names, dtype=object)[np.nonzero(on)[1]], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _unique_key(table: pa.Table, key: str, source: str, lines: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """Rows with a null key or repeating an earlier key go to the dead letter."""
    null = np.asarray(pc.is_null(table[key]), dtype=bool)
    idx = np.flatnonzero(~null)
    sub = table.select([key]).take(pa.array(idx)).append_column("__row", pa.array(idx, pa.int64()))
    first = np.asarray(
        sub.group_by(key, use_threads=False).aggregate([("__row", "min")])["__row_min"], dtype=np.int64
    )
    dup = ~null
    dup[first] = False
    bad = np.flatnonzero(null | dup)
    reasons = [f"null_{key}" if null[i] else f"duplicate_{key}" for i in bad]
    keep = np.ones(table.num_rows, dtype=bool)
    keep[bad] = False
    return table.filter(pa.array(keep)), dead_letter_rows(table, bad, reasons, source, lines)


AGE_DOMAIN = (1, 120)
"""Ages a users row may carry (ML-100K: years; ML-1M: the age-group codes 1..56)."""


def make_users(
    user_id, age, gender, occupation, zip_code, occupation_codes: bool, source: str, lines: np.ndarray
) -> tuple[pa.Table, pa.Table]:
    """USERS table (and its dead letters) from raw string columns; `lines` are the
    source line numbers of the rows. A row with a null or repeated id is rejected; a value
    outside its domain (an unparseable or impossible age, an unknown occupation code) is
    nulled and recorded in the dead letter with its reason, the row kept."""
    raw = pa.table(
        {"user_id": user_id, "age": age, "gender": gender, "occupation": occupation, "zip": zip_code}
    )
    occ = clean_text(occupation)
    nulled = []  # (mask of rows whose value was nulled, reason)
    if occupation_codes:
        codes = _int32(occ).to_numpy(zero_copy_only=False)
        ok = ~np.isnan(codes) & (codes >= 0) & (codes < len(ML1M_OCCUPATIONS))
        names = np.asarray(ML1M_OCCUPATIONS, dtype=object)[np.where(ok, codes, 0).astype(int)]
        nulled.append((~ok & ~np.asarray(pc.is_null(occ)), "occupation_out_of_domain"))
        occ = pa.array(names, pa.string(), mask=~ok)
    given = ~np.asarray(pc.is_null(clean_text(age)))
    years = parse_float(clean_text(age)).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        in_domain = (years >= AGE_DOMAIN[0]) & (years <= AGE_DOMAIN[1]) & (years == np.round(years))
    nulled += [(given & np.isnan(years), "age_unparseable"), (given & ~np.isnan(years) & ~in_domain,
                                                             "age_out_of_domain")]  # fmt: skip
    ages = pa.array(np.where(in_domain, years, 0).astype(np.int32), pa.int32(), mask=~in_domain)
    table = pa.table(
        {
            "user_id": clean_text(user_id),
            "age": ages,
            "gender": clean_text(gender),
            "occupation": occ,
            "zip_prefix": pc.utf8_slice_codeunits(clean_text(zip_code), 0, 3),
        }
    )
    good, dead = _unique_key(table, "user_id", source, lines)
    records = [dead_letter_rows(raw, np.flatnonzero(m), [r] * int(m.sum()), source, lines) for m, r in nulled]
    return conform(good, USERS, source), pa.concat_tables([dead, *records])


def make_items(
    item_id, title, year: pa.Array, genres: pa.Array, source: str, lines: np.ndarray
) -> tuple[pa.Table, pa.Table]:
    """ITEMS table (and its dead letters); the trailing '(YYYY)' is removed from titles."""
    clean = clean_text(pc.replace_substring_regex(title, r"\s*\(\d{4}\)\s*$", ""))
    table = pa.table({"item_id": clean_text(item_id), "title": clean, "year": year, "genres": genres})
    good, dead = _unique_key(table, "item_id", source, lines)
    return conform(good, ITEMS, source), dead


def make_interactions(user_id, item_id, rating, ts, source: str, lines: np.ndarray) -> Validated:
    """Validated INTERACTIONS from raw string columns: label = rating >= 4."""
    value = parse_float(rating).to_numpy(zero_copy_only=False)
    ok = np.isfinite(value)
    label = pa.array(np.where(ok, value >= 4, 0).astype(np.float32), pa.float32(), mask=~ok)
    raw = pa.table({"user_id": user_id, "item_id": item_id, "ts": ts, "label": label, "rating": rating})
    return validate_interactions(raw, source, row_numbers=lines)


def _assemble(layout: str, users, items, validated, parse_dead: list[pa.Table]) -> MovieLens:
    (users_t, users_dead), (items_t, items_dead) = users, items
    dead = pa.concat_tables([*parse_dead, users_dead, items_dead, validated.dead]).cast(DEAD_LETTER)
    counts = dict.fromkeys(REASONS, 0)
    for reason, n in zip(*np.unique(np.asarray(dead["reason"], dtype=object), return_counts=True)):
        counts[str(reason)] = int(n)
    return MovieLens(layout, users_t, items_t, validated.good, dead, counts)


def detect_layout(folder: str | Path) -> str:
    """'ml-100k' or 'ml-1m' from the official files present in `folder`."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory; pass the folder of an unpacked GroupLens archive")
    for layout, files in GROUPLENS_FILES.items():
        if (path / files[0]).is_file():
            missing = [f for f in files if not (path / f).is_file()]
            if missing:
                raise FileNotFoundError(f"{path}: {layout} layout (found {files[0]}) but missing {missing}")
            return layout
    expected = "; ".join(f"{k}: {', '.join(v)}" for k, v in GROUPLENS_FILES.items())
    raise FileNotFoundError(f"{path}: no MovieLens files found. Expected the GroupLens layout of {expected}")


def load_grouplens(folder: str | Path) -> MovieLens:
    """Load an unpacked official GroupLens ml-100k or ml-1m folder."""
    path = Path(folder)
    layout = detect_layout(path)
    inter_f, user_f, item_f = (path / f for f in GROUPLENS_FILES[layout])
    if layout == "ml-100k":
        genres = ML100K_GENRES
        if (path / "u.genre").is_file():
            pairs = [
                ln.split("|") for ln in (path / "u.genre").read_text("latin-1").splitlines() if ln.strip()
            ]
            genres = tuple(name for name, _ in sorted(pairs, key=lambda p: int(p[1])))
        r = read_text(inter_f.read_bytes(), "\t", str(inter_f), ["user_id", "item_id", "rating", "ts"])
        u = read_text(
            user_f.read_bytes(), "|", str(user_f), ["user_id", "age", "gender", "occupation", "zip"]
        )
        flags = [f"g{k}" for k in range(len(genres))]
        m = read_text(
            item_f.read_bytes(),
            "|",
            str(item_f),
            ["item_id", "title", "date", "video", "url", *flags],
            encoding="latin-1",
        )
        year = pc.coalesce(
            _year(m.table["date"], r"(?P<year>\d{4})\s*$"), _year(m.table["title"], _YEAR_IN_TITLE)
        )
        genre_lists = _flags_to_list([m.table[f] for f in flags], genres)
    else:
        r = read_text(
            inter_f.read_bytes(), "::", str(inter_f), ["user_id", "item_id", "rating", "ts"], "latin-1"
        )
        u = read_text(
            user_f.read_bytes(),
            "::",
            str(user_f),
            ["user_id", "gender", "age", "occupation", "zip"],
            "latin-1",
        )
        m = read_text(item_f.read_bytes(), "::", str(item_f), ["item_id", "title", "genres"], "latin-1")
        year, genre_lists = _year(m.table["title"], _YEAR_IN_TITLE), _split_list(m.table["genres"], "|")
    ut, mt, rt = u.table, m.table, r.table
    users = make_users(
        ut["user_id"],
        ut["age"],
        ut["gender"],
        ut["occupation"],
        ut["zip"],
        layout == "ml-1m",
        str(user_f),
        u.lines,
    )
    items = make_items(mt["item_id"], mt["title"], year, genre_lists, str(item_f), m.lines)
    inter = make_interactions(rt["user_id"], rt["item_id"], rt["rating"], rt["ts"], str(inter_f), r.lines)
    return _assemble(layout, users, items, inter, [r.dead, u.dead, m.dead])


def _recbole_table(data: bytes, source: str, required: tuple[str, ...]) -> Parsed:
    """A RecBole atomic file with its 'name:type' header renamed to bare names."""
    parsed = read_text(data, "\t", source)
    table = parsed.table.rename_columns([c.split(":", 1)[0].strip() for c in parsed.table.column_names])
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise SchemaError(f"{source}: header lacks columns {missing}; found {table.column_names}")
    return parsed._replace(table=table)


def load_recbole(layout: str, files: Mapping[str, bytes], origin: str = "recbole") -> MovieLens:
    """Load RecBole's ml-100k or ml-1m atomic files, given as bytes keyed 'inter',
    'user', 'item'; `origin` prefixes the dead-letter source names."""
    if layout not in GROUPLENS_FILES:
        raise ValueError(f"layout must be one of {sorted(GROUPLENS_FILES)}, got {layout!r}")
    missing = [k for k in ("inter", "user", "item") if k not in files]
    if missing:
        raise ValueError(f"{origin}: missing RecBole files {missing}")
    src = {k: f"{origin}:{layout}.{k}" for k in ("inter", "user", "item")}
    r = _recbole_table(files["inter"], src["inter"], ("user_id", "item_id", "rating", "timestamp"))
    u = _recbole_table(files["user"], src["user"], ("user_id", "age", "gender", "occupation", "zip_code"))
    m = _recbole_table(files["item"], src["item"], ("item_id", "movie_title", "release_year"))
    rt, ut, mt = r.table, u.table, m.table
    genre_col = next((c for c in ("class", "genre") if c in mt.column_names), None)
    if genre_col is None:
        raise SchemaError(
            f"{src['item']}: header lacks a genre column ('class' or 'genre'); found {mt.column_names}"
        )
    user_ids, inter_users = ut["user_id"], rt["user_id"]
    if layout == "ml-1m":
        user_ids = pc.replace_substring_regex(user_ids, "^1m_", "")
        inter_users = pc.replace_substring_regex(inter_users, "^1m_", "")
    users = make_users(
        user_ids,
        ut["age"],
        ut["gender"],
        ut["occupation"],
        ut["zip_code"],
        layout == "ml-1m",
        src["user"],
        u.lines,
    )
    year = pc.coalesce(
        _year(mt["release_year"], r"^\s*(?P<year>\d{4})(?:\.0*)?\s*$"),
        _year(mt["movie_title"], _YEAR_IN_TITLE),
        _year(mt["item_id"], _YEAR_IN_TITLE),
    )
    items = make_items(
        mt["item_id"], mt["movie_title"], year, _split_list(mt[genre_col], " "), src["item"], m.lines
    )
    inter = make_interactions(
        inter_users, rt["item_id"], rt["rating"], rt["timestamp"], src["inter"], r.lines
    )
    return _assemble(layout, users, items, inter, [r.dead, u.dead, m.dead])
