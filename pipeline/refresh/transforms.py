"""The Beam transforms of the refresh job. Elements are Arrow tables keyed by user
bucket, never single events: a row group is read, validated, filtered to ts < as_of and
cut to each user's newest N events with vectorized code; each bundle emits one value per
bucket (`shuffle.BucketBuffer`); the bucket's events, feature rows and previous rows are
joined by bucket (CoGroupByKey) and `AdaptUsers` merges the events to each user's newest
N (`TopNCombineFn`, whose accumulator holds at most N events per user) and adapts.

Counters (namespace "refresh"): events_read, events_used, dead_lettered,
duplicates_across_batches (exact duplicates in different row groups or files, found
among each user's newest events: the job compares no others), users_with_events,
users_adapted, users_zero_step, users_carried_forward (these three add up to the
snapshot's rows), cold_users, users_without_features, users_nonfinite (rows whose
embedding came out NaN or inf: the run then publishes nothing), rows_written, and *_ms
timers per stage (read, combine: merging a bucket's events, adapt, release: returning
memory to the OS after a bucket, write).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from meta_embed.tables import TS_TYPE, decode_error
from pipeline.data.validate import validate_interactions
from pipeline.refresh.adapt import AdaptSettings, adapt_bucket, load_adapt_state
from pipeline.refresh.arrow import (
    event_schema,
    pack,
    top_n,
    top_n_counted,
    unpack,
    user_runs,
)
from pipeline.refresh.inputs import Chunk, open_parquet, read_all
from pipeline.refresh.runners import release_memory
from pipeline.refresh.shuffle import BucketBuffer, table_of

NS = "refresh"
DEAD = "dead_letter"


class ArrowTableCoder(beam.coders.Coder):
    """Arrow tables as Arrow IPC with zstd (instead of pickle) wherever a PCollection holds tables."""

    def encode(self, table: pa.Table) -> bytes:
        return pack(table)

    def decode(self, encoded: bytes) -> pa.Table:
        return unpack(encoded)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return pa.Table


beam.coders.registry.register_coder(
    pa.Table, ArrowTableCoder
)  # used where a PCollection is hinted with pa.Table
Packed = tuple[int, bytes | str]  # a bucket's rows: `pack`ed bytes or a spill reference


def counter(name: str):
    return Metrics.counter(NS, name)


def ms_since(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)


def _batches(chunk: Chunk, columns: list[str], rows: int) -> Iterator[pa.Table]:
    """The record batches of one row group; decoding errors name the file and row group."""
    pf = open_parquet(chunk.path)
    it = pf.iter_batches(batch_size=rows, row_groups=[chunk.row_group], columns=columns)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
            raise decode_error(chunk.path, err, f" of row group {chunk.row_group}") from err
        yield pa.Table.from_batches([batch])


class Bucketed(beam.DoFn):
    """A read DoFn whose output goes through its bundle's `BucketBuffer`: one value per user
    bucket when the buffer is full and when the bundle ends. Subclasses set `buckets`,
    `key` and `spill_dir` (set: spill references instead of packed bytes)."""

    buckets: int
    key: str = "user_id"
    spill_dir: str | None = None

    def start_bundle(self) -> None:
        spill = FileSystems.join(self.spill_dir, uuid.uuid4().hex) if self.spill_dir else None
        self._buffer = BucketBuffer(self.buckets, self.key, spill)

    def finish_bundle(self) -> Iterable[WindowedValue]:
        for bucket_value in self._buffer.flush():
            yield GlobalWindows.windowed_value(bucket_value)


class ReadEvents(Bucketed):
    """Chunks -> (bucket, packed event table or spill reference): valid events before as_of,
    each user's newest N per batch, one value per bucket and flush of the bundle's buffer.

    Invalid rows go to the `dead_letter` output as (name, DEAD_LETTER table).
    """

    def __init__(
        self,
        item_files: tuple[str, ...],
        item_key: str,
        as_of_us: int,
        target: str,
        context: tuple[str, ...],
        max_support: int,
        buckets: int,
        batch_rows: int = 1 << 18,
        spill_dir: str | None = None,
    ):
        self.item_files, self.item_key, self.as_of_us, self.target = item_files, item_key, as_of_us, target
        self.context, self.max_support, self.buckets, self.batch_rows = (
            context,
            max_support,
            buckets,
            batch_rows,
        )
        self.spill_dir = spill_dir  # set: emit (bucket, spill reference) instead of (bucket, packed bytes)

    def setup(self) -> None:
        items = read_all(self.item_files, [self.item_key])
        self._items = items.column(self.item_key).combine_chunks().cast(pa.string())

    def events(self, good: pa.Table) -> pa.Table:
        """Valid interaction rows -> the compact event table, keeping ts < as_of."""
        good = good.filter(pc.less(good.column("ts"), pa.scalar(self.as_of_us, TS_TYPE)))
        item = pc.index_in(good.column("item_id"), value_set=self._items).fill_null(len(self._items))
        y = good.column(self.target).fill_null(0.0).cast(pa.float32())
        cols = [good.column("user_id"), item.cast(pa.int32()), good.column("ts").cast(pa.int64()), y]
        schema = event_schema(pa.schema([good.schema.field(c) for c in self.context]))
        return pa.Table.from_arrays(cols + [good.column(c) for c in self.context], schema=schema)

    def process(self, chunk: Chunk) -> Iterable:
        start, seen = time.perf_counter(), 0
        columns = ["user_id", "item_id", "ts", "label", "rating", *self.context]
        tag = hashlib.sha1(chunk.path.encode()).hexdigest()[:12]
        for k, table in enumerate(_batches(chunk, columns, self.batch_rows)):
            good, dead, _ = validate_interactions(table, chunk.path, chunk.row_offset + seen)
            seen += table.num_rows
            counter("events_read").inc(table.num_rows)
            if dead.num_rows:
                counter("dead_lettered").inc(dead.num_rows)
                yield beam.pvalue.TaggedOutput(DEAD, (f"{tag}-{chunk.row_group:05d}-{k:05d}", dead))
            events = self.events(good)
            counter("events_used").inc(events.num_rows)
            yield from self._buffer.add(top_n(events, self.max_support))
        release_memory()  # return freed batch memory to the OS between chunks
        counter("read_ms").inc(ms_since(start))


class TopNCombineFn(beam.CombineFn):
    """Merge of a bucket's event tables to each user's newest N; memory stays O(N x users).

    `AdaptUsers` applies it to the values the join brought for a bucket, rather than a
    lifted CombinePerKey: ReadEvents already cuts every batch to each user's newest N, and
    a lifted pre-combine on a local runner keeps one bundle's (a worker's whole share of)
    accumulators in memory until the bundle ends.
    """

    def __init__(self, n: int, compact_rows: int = 1 << 17):
        self.n, self.compact_rows = n, compact_rows

    def create_accumulator(self) -> list[pa.Table]:
        return []

    def _compact(self, tables: list[pa.Table], force: bool = False) -> list[pa.Table]:
        """Merge the tables once they hold `compact_rows` rows, or always when forced (one
        table too: a buffered value may hold several batches of a user)."""
        small = len(tables) < 2 or sum(t.num_rows for t in tables) < self.compact_rows
        if not tables or (small and not force):
            return tables
        start = time.perf_counter()
        merged, duplicates = top_n_counted(pa.concat_tables(tables), self.n)
        counter("duplicates_across_batches").inc(duplicates)  # within a batch, validation dead-letters them
        out = [merged]
        counter("combine_ms").inc(ms_since(start))
        return out

    def add_input(self, acc: list[pa.Table], ref: bytes | str) -> list[pa.Table]:
        acc.append(table_of(ref))
        return self._compact(acc)

    def merge_accumulators(self, accs: Iterable[list[pa.Table]]) -> list[pa.Table]:
        return self._compact([t for acc in accs for t in acc])

    def extract_output(self, acc: list[pa.Table]) -> pa.Table:
        return self._compact(acc, force=True)[0]


class ReadKeyed(Bucketed):
    """Chunks -> (bucket, packed rows of `columns` or spill reference), one value per bucket
    and flush of the bundle's buffer, for tables joined to the events by user bucket."""

    def __init__(self, columns: tuple[str, ...], key: str, buckets: int, spill_dir: str | None = None):
        self.columns, self.key, self.buckets, self.spill_dir = columns, key, buckets, spill_dir

    def process(self, chunk: Chunk) -> Iterable[tuple[int, bytes | str]]:
        for table in _batches(chunk, list(self.columns), 1 << 18):
            yield from self._buffer.add(table)


class AdaptUsers(beam.DoFn):
    """(bucket, {"events", "users", "previous": the bucket's values}) -> (bucket, snapshot rows).

    Merges the bucket's events to each user's newest N, counts its users with events (a
    check independent of adapt), and adapts. Loads the checkpoint once per worker in
    setup() (checking the feature-spec hash). `empty` is the packed empty event table (a
    bucket of cold users has none). `fail_after_users` is a fault hook for tests: raise
    once this many users were done.
    """

    def __init__(self, settings: AdaptSettings, empty: bytes, fail_after_users: int | None = None):
        self.settings, self.empty, self.fail_after_users = settings, empty, fail_after_users

    def setup(self) -> None:
        import torch

        torch.set_num_threads(self.settings.torch_threads)
        self._state = load_adapt_state(self.settings)
        self._merge = TopNCombineFn(self.settings.max_support)
        self._done = 0

    def process(
        self, element: tuple[int, Mapping[str, Iterable[bytes | str]]]
    ) -> Iterable[tuple[int, pa.Table]]:
        bucket, joined = element
        acc = self._merge.create_accumulator()
        for ref in joined["events"]:
            acc = self._merge.add_input(acc, ref)
        events = self._merge.extract_output(acc) if acc else unpack(self.empty)
        counter("users_with_events").inc(len(user_runs(events)[0]))
        start = time.perf_counter()
        users = [table_of(ref) for ref in joined["users"]]
        previous = [table_of(ref) for ref in joined["previous"]]
        user_table = pa.concat_tables(users) if users else _empty_users(self._state)
        prev = pa.concat_tables(previous) if previous else None
        rows, counts = adapt_bucket(self._state, self.settings, events, user_table, prev)
        counter("adapt_ms").inc(ms_since(start))
        start = time.perf_counter()
        release_memory()
        counter("release_ms").inc(ms_since(start))
        for name in ("adapted", "carried_forward", "without_features", "zero_step", "nonfinite"):
            counter(f"users_{name}").inc(getattr(counts, name))
        counter("cold_users").inc(counts.cold)
        self._done += rows.num_rows
        if self.fail_after_users is not None and self._done >= self.fail_after_users:
            raise RuntimeError(
                f"injected fault after {self._done} users (fail_after_users={self.fail_after_users})"
            )
        yield bucket, rows


def _empty_users(state) -> pa.Table:
    spec = state.ckpt.spec
    return pa.table(
        {
            spec.user_key: pa.array([], pa.string()),
            **{
                c.name: pa.array(
                    [],
                    pa.list_(pa.string())
                    if c.kind == "bag"
                    else (pa.float64() if c.kind == "bucket" else pa.string()),
                )
                for c in spec.user
            },
        }
    )
