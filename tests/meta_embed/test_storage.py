"""meta_embed.storage: one meaning for local paths, s3:// (a real S3 server on loopback) and
gs:// (a GCS emulator on loopback)."""

from __future__ import annotations

import threading

import pytest

from meta_embed import storage
from tests.servers import root_on


@pytest.fixture(params=["local", "s3", "gs"])
def root(request, tmp_path) -> str:
    return root_on(request.param, request, tmp_path)


def test_write_read_list_delete(root):
    storage.write_text(storage.join(root, "a", "x.txt"), "one")
    storage.write_bytes(storage.join(root, "a", "b", "y.bin"), b"\x00\x01")
    storage.write_text(storage.join(root, "z.txt"), "two")
    assert storage.read_text(storage.join(root, "a", "x.txt")) == "one"
    assert storage.listdir(root) == ["a", "z.txt"] and storage.listdir(storage.join(root, "a")) == [
        "b",
        "x.txt",
    ]
    assert storage.exists(storage.join(root, "a")) and storage.exists(storage.join(root, "z.txt"))
    assert (
        not storage.exists(storage.join(root, "nothing")) and storage.listdir(storage.join(root, "no")) == []
    )
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing.txt"))
    storage.delete_tree(storage.join(root, "a"))
    storage.delete_tree(storage.join(root, "z.txt"))
    storage.delete_tree(storage.join(root, "never-there"))
    assert storage.listdir(root) == []


def test_swap_writes_only_over_what_the_writer_read(root):
    path = storage.join(root, "CURRENT")
    storage.swap(path, b"one\n", None)
    with pytest.raises(storage.Conflict, match="expected absent, found 'one'"):
        storage.swap(path, b"two\n", None)
    storage.swap(path, b"two\n", b"one\n")
    with pytest.raises(storage.Conflict, match="expected 'one', found 'two'"):
        storage.swap(path, b"three\n", b"one\n")
    assert storage.read_bytes(path) == b"two\n"


@pytest.mark.parametrize("where", ["local", "s3"])  # the GCS emulator ignores ifGenerationMatch
def test_concurrent_swaps_from_the_same_state_one_wins(where, request, tmp_path):
    root = root_on(where, request, tmp_path)
    path = storage.join(root, "CURRENT")
    storage.swap(path, b"base\n", None)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def writer(k: int) -> None:
        barrier.wait()
        try:
            storage.swap(path, f"w{k}\n".encode(), b"base\n")
            results.append(f"w{k}")
        except storage.Conflict:
            results.append("refused")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [r for r in results if r != "refused"]
    assert len(results) == 8 and len(winners) == 1
    assert storage.read_text(path).strip() == winners[0]


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_upload_and_download_copy_a_folder_both_ways(scheme, request, tmp_path):
    remote = storage.join(request.getfixturevalue(f"{scheme}_root"), "ckpt")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for rel in ("VERSION", "a.bin", "sub/b.bin"):
        (src / rel).write_bytes(rel.encode())
    storage.upload(src, remote, last=("VERSION",))
    got = storage.download(remote, tmp_path / "dst")
    assert sorted(p.relative_to(tmp_path / "dst").as_posix() for p in got) == [
        "VERSION",
        "a.bin",
        "sub/b.bin",
    ]
    assert all(
        (tmp_path / "dst" / rel).read_bytes() == rel.encode() for rel in ("VERSION", "a.bin", "sub/b.bin")
    )


def test_other_schemes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="only local paths, s3:// and gs://"):
        storage.read_bytes("hdfs://namenode/x")
