"""Beam runner selection for the refresh job.

With no `--runner`, the job runs locally on the DirectRunner's batch engine (the
FnApiRunner) with two worker processes. It is named explicitly: in Beam 2.6x-2.7x,
`--runner=DirectRunner` first tries the Prism runner, which downloads a binary, and a
machine without network must never try that. Any other Beam option passes through
unchanged (`--runner=DataflowRunner --project=...`, `--runner=PortableRunner
--job_endpoint=...`); see docs/operations.md for the exact flags per runner.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import logging
import platform
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

LOCAL_RUNNER = "FnApiRunner"
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LOCAL_DEFAULTS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


def _has(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def pipeline_args(args: Sequence[str] | None) -> list[str]:
    """The Beam arguments to run with: the local default unless a runner is given."""
    args = list(args or [])
    if not _has(args, "--runner"):
        args = [f"--runner={LOCAL_RUNNER}"] + args
        args += [d for d in LOCAL_DEFAULTS if not _has(args, d.split("=")[0])]
    return args


def _option_classes(base: type = PipelineOptions) -> Iterator[type]:
    for cls in base.__subclasses__():
        yield cls
        yield from _option_classes(cls)


@functools.cache
def _beam_parser() -> argparse.ArgumentParser:
    """A parser of every registered Beam pipeline option, built the way Beam builds its own
    (PipelineOptions.get_all_options)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    for cls in set(_option_classes()):
        cls._add_argparse_args(parser)
    return parser


def unknown_options(args: Sequence[str]) -> list[str]:
    """The arguments in `args` that no registered Beam pipeline option takes (Beam's own
    parser would drop them with a log line): unknown flags, and the values after them."""
    return _beam_parser().parse_known_args(list(args))[1]


def beam_flags() -> list[str]:
    """Every `--flag` of the registered Beam pipeline options."""
    return sorted(o for o in _beam_parser()._option_string_actions if o.startswith("--"))


def options(args: Sequence[str] | None) -> PipelineOptions:
    return PipelineOptions(pipeline_args(args))


def runner_name(opts: PipelineOptions) -> str:
    """The runner as written in the manifest, with the local mode where it matters."""
    name = opts.view_as(StandardOptions).runner or LOCAL_RUNNER
    all_opts = opts.get_all_options()
    if name in ("FnApiRunner", "DirectRunner"):
        return f"{name}[{all_opts.get('direct_running_mode')},workers={all_opts.get('direct_num_workers')}]"
    return name


def is_local(opts: PipelineOptions) -> bool:
    """Whether this process itself runs the pipeline (the local FnApiRunner or DirectRunner)."""
    return (opts.view_as(StandardOptions).runner or LOCAL_RUNNER) in ("FnApiRunner", "DirectRunner")


def worker_command() -> str:
    """The command line of a local worker process: `beam_worker`, at the launcher's log level."""
    level = "INFO" if logging.getLogger().isEnabledFor(logging.INFO) else "WARNING"
    return f"{shlex.quote(sys.executable)} -m pipeline.refresh.beam_worker --log-level {level}"


def runner(opts: PipelineOptions) -> Any:
    """The runner instance for `opts`: a `LocalRunner` for the local default (the FnApiRunner
    with worker processes); None where Beam resolves the runner by its name. (The class is
    made here: importing Beam's runner modules at module level would slow every command
    that only checks Beam flags.)"""
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability import python_urns
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    class LocalRunner(FnApiRunner):
        """The FnApiRunner whose worker processes start through `beam_worker` (its logging set up
        like the launcher's) rather than Beam's bare `sdk_worker_main`."""

        def run_via_runner_api(self, pipeline_proto: Any, options: PipelineOptions) -> Any:
            for env in pipeline_proto.components.environments.values():
                if env.urn == python_urns.SUBPROCESS_SDK:
                    env.payload = worker_command().encode()
            return super().run_via_runner_api(pipeline_proto, options)

    name = opts.view_as(StandardOptions).runner or LOCAL_RUNNER
    if name == LOCAL_RUNNER and opts.view_as(DirectOptions).direct_running_mode == "multi_processing":
        return LocalRunner()
    return None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")


def limit_heap_retention(threshold: int = 128 * 1024) -> None:
    """Make glibc in this process return freed blocks of `threshold` bytes or more to the OS.

    The local runner holds the whole shuffle in this process as many large byte strings;
    with glibc's default adaptive threshold the freed ones stay in the heap, and the
    launcher's RSS roughly doubles. Applied to the launcher only: in the workers the
    same setting slows the inner loop's tensor allocations by about 1.5x (they use
    `release_memory` between stages instead). No-op off glibc.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)


def release_memory() -> None:
    """Return freed memory to the OS: Arrow's pool, then glibc's heap (malloc_trim)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
