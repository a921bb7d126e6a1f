"""Hot reload: notice a new ROOT/CURRENT, load it in the background, swap atomically.

`StateHolder.state` is the one reference requests read (once, at their start). A
reload builds a complete new `ServingState` off to the side (checkpoint, catalog,
store, indexes) and replaces the reference in one assignment; requests already in
flight keep the old object until they finish. When the new snapshot was written by
another model_version, `load_state` loads that model's checkpoint first, so scorer and
embeddings always switch together. A failed load leaves the old state serving and is
retried with backoff; its error is reported by `/v1/info`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

from meta_embed.snapshot import current_name
from serving import telemetry
from serving.cache import remove_entry
from serving.serving_config import ServingConfig
from serving.state import ServingState, Sources, load_state

log = logging.getLogger("serving.reload")


@dataclasses.dataclass
class ReloadStats:
    checks: int = 0
    swaps: int = 0
    failures: int = 0
    last_error: str | None = None
    last_swap_at: float | None = None


class StateHolder:
    """Holds the live `ServingState`; `refresh()` swaps in the snapshot CURRENT names.

    A holder opened from a config serves private copies of the artifacts from a cache
    directory (`ServingConfig.cache_dir`, or a temporary one it removes on `close`), and
    removes the copy of a state it has swapped out.
    """

    def __init__(
        self,
        state: ServingState,
        config: ServingConfig | None = None,
        sources: Sources | None = None,
        cache: Path | None = None,
        owns_cache: bool = False,
    ):
        self._state = state
        self.config, self.sources, self.cache, self._owns_cache = config, sources, cache, owns_cache
        self.stats = ReloadStats()
        self._lock = threading.Lock()  # one reload at a time; readers never take it
        self._retry_at: dict[str, float] = {}
        self._failed: dict[str, int] = {}  # consecutive failures of each snapshot name

    @classmethod
    def open(cls, config: ServingConfig) -> StateHolder:
        sources = Sources.read(config)
        owns = config.cache_dir is None
        cache = Path(tempfile.mkdtemp(prefix="meta-embed-serve-")) if owns else config.cache_dir
        try:
            return cls(load_state(config, sources, cache=cache), config, sources, cache, owns)
        except BaseException:
            if owns:
                shutil.rmtree(cache, ignore_errors=True)
            raise

    def close(self) -> None:
        """Remove the cache directory if this holder created it."""
        if self._owns_cache and self.cache is not None:
            shutil.rmtree(self.cache, ignore_errors=True)

    @property
    def state(self) -> ServingState:
        return self._state

    def swap(self, new: ServingState) -> ServingState:
        """Replace the live state (one reference assignment); returns the old one."""
        old, self._state = self._state, new
        self.stats.swaps += 1
        self.stats.last_swap_at = time.time()
        return old

    def refresh(self, force: bool = False) -> bool:
        """Load and swap in CURRENT if it names another snapshot; True if swapped."""
        if self.config is None or self.sources is None:
            raise ValueError("StateHolder.refresh needs the ServingConfig and Sources it was opened with")
        with self._lock:
            self.stats.checks += 1
            name = current_name(self.config.root)
            if name is None or name == self._state.snapshot:
                return False
            if not force and time.monotonic() < self._retry_at.get(name, 0.0):
                return False
            try:
                new = load_state(self.config, self.sources, previous=self._state, cache=self.cache)
            except Exception as err:  # any failure keeps the old state serving; surfaced in /v1/info
                self._record_failure(name, err)
                telemetry.RELOAD_FAILED.inc()
                return False
            self._retry_at.clear()  # a success, or a new CURRENT, starts the back-off afresh
            self._failed.clear()
            old = self.swap(new)
            if self.cache is not None and old.mapped != new.mapped:
                remove_entry(old.mapped, self.cache)
            if (
                gc.get_freeze_count()
            ):  # the app froze its heap at start: collect the old state, freeze the new
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            _log_swap(old, new)
            telemetry.RELOAD_OK.inc()
            return True

    def _record_failure(self, name: str, err: Exception) -> None:
        """Count the failure and back off for this snapshot name: twice as long after each
        consecutive failure of it, from one interval; another name starts at one interval."""
        self._failed = {name: self._failed.get(name, 0) + 1}  # a new CURRENT forgets the old one's failures
        self.stats.failures += 1
        root = str(self.config.root).rstrip("/") + "/" if self.config else ""
        self.stats.last_error = f"{name}: {type(err).__name__}: {str(err).replace(root, '')}"
        interval = self.config.reload_interval_s if self.config else 10.0
        backoff = min(300.0, max(interval, 1.0) * 2 ** min(self._failed[name] - 1, 8))
        self._retry_at = {name: time.monotonic() + backoff}
        log.error(
            "cannot load snapshot %s; still serving %s; retry in %.0fs: %s",
            name,
            self._state.snapshot,
            backoff,
            self.stats.last_error,
        )


def _log_swap(old: ServingState, new: ServingState) -> None:
    """One line per swap; a swap to an older as_of (ROOT/CURRENT rolled back) is a warning."""
    was, now = old.store.meta.as_of, new.store.meta.as_of
    model = "" if new.model_version == old.model_version else f", model_version was {old.model_version}"
    if now < was:
        log.warning(
            "rolled back to snapshot %s (as_of %s, model_version %s) from %s (as_of %s)%s",
            new.snapshot, now.isoformat(), new.model_version, old.snapshot, was.isoformat(), model,
        )  # fmt: skip
    else:
        log.info(
            "serving snapshot %s (as_of %s, model_version %s) in place of %s%s",
            new.snapshot, now.isoformat(), new.model_version, old.snapshot, model,
        )  # fmt: skip


class Watcher:
    """A daemon thread that calls `holder.refresh()` every `interval_s` seconds until stopped."""

    def __init__(self, holder: StateHolder, interval_s: float):
        if interval_s <= 0:
            raise ValueError(f"Watcher interval must be > 0 seconds, got {interval_s}")
        self.holder, self.interval_s = holder, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.holder.refresh()
