"""The object stores behind `meta_embed.storage`: one class per API, each the same few
calls on (bucket, key) pairs (`Store`). Objects carry a version token read with their
bytes (an S3 ETag, a GCS generation); `put_if` writes only over the version the caller
read (None: only where there is no object), the one primitive publishing relies on.

The clients are imported when a store is first used, so a machine without one of them
installed still works with the other and with local paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

DELETE_THREADS = 16  # GCS deletes one object per request (a snapshot has a part per bucket)
READ_TRIES = 5  # a GCS read retried when the object is replaced between metadata and bytes


class Store(Protocol):
    def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        """The object's bytes and version; FileNotFoundError when there is none."""

    def put(self, bucket: str, key: str, data: bytes) -> None: ...

    def put_if(self, bucket: str, key: str, data: bytes, version: str | None) -> bool:
        """Write only if the object is still at `version` (None: absent); False if it was not."""

    def is_object(self, bucket: str, key: str) -> bool: ...

    def keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with `prefix`."""

    def children(self, bucket: str, prefix: str) -> set[str]:
        """The names directly under `prefix` (which ends in `/`): objects and sub-prefixes."""

    def delete(self, bucket: str, key: str, under: list[str]) -> None:
        """Delete the object `key` (if any) and `key`/`rel` for each `rel` in `under`."""

    def download(self, bucket: str, key: str, dest: Path) -> None: ...

    def upload(self, src: Path, bucket: str, key: str) -> None: ...


class S3Store:
    """An S3 API (AWS, SeaweedFS, MinIO ...) through boto3. Versions are ETags."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import boto3
        from botocore.exceptions import ClientError

        self.client, self.error = boto3.session.Session().client("s3", **settings), ClientError

    def _code(self, err: Exception) -> str:
        return getattr(err, "response", {}).get("Error", {}).get("Code", "")

    def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        try:
            got = self.client.get_object(Bucket=bucket, Key=key)
        except self.error as err:
            if self._code(err) in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"s3://{bucket}/{key}") from err
            raise
        return got["Body"].read(), got["ETag"]

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def put_if(self, bucket: str, key: str, data: bytes, version: str | None) -> bool:
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except self.error as err:
            if self._code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise
        return True

    def is_object(self, bucket: str, key: str) -> bool:
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except self.error as err:
            if self._code(err) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["Size"]

    def children(self, bucket: str, prefix: str) -> set[str]:
        names: set[str] = set()
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
            names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        return names

    def delete(self, bucket: str, key: str, under: list[str]) -> None:
        keys = [key] + [f"{key}/{rel}" for rel in under]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        # a store with folders (SeaweedFS) keeps the empty ones: remove them too, deepest first
        folders = {rel.rsplit("/", k)[0] for rel in under for k in range(1, rel.count("/") + 1)}
        for folder in sorted(folders, key=lambda f: -f.count("/")) + [""]:
            self.client.delete_object(Bucket=bucket, Key=f"{key}/{folder}/" if folder else f"{key}/")

    def download(self, bucket: str, key: str, dest: Path) -> None:
        self.client.download_file(bucket, key, str(dest))

    def upload(self, src: Path, bucket: str, key: str) -> None:
        self.client.upload_file(str(src), bucket, key)


class GCSStore:
    """Google Cloud Storage through google-cloud-storage. Versions are generations."""

    def __init__(self) -> None:
        from google.api_core import exceptions
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage as gcs

        try:
            self.client = gcs.Client()
        except DefaultCredentialsError as err:
            raise RuntimeError(
                f"gs://: no Google Cloud credentials ({err}); run `gcloud auth application-default "
                "login`, set GOOGLE_APPLICATION_CREDENTIALS, or STORAGE_EMULATOR_HOST for an emulator"
            ) from err
        self.missing, self.lost = exceptions.NotFound, exceptions.PreconditionFailed

    def _blob(self, bucket: str, key: str) -> Any:
        return self.client.bucket(bucket).blob(key)

    def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        for _ in range(READ_TRIES):
            blob = self.client.bucket(bucket).get_blob(key)
            if blob is None:
                raise FileNotFoundError(f"gs://{bucket}/{key}")
            generation = blob.generation  # (a download refreshes the blob's properties)
            try:  # the bytes of the generation whose number is returned, not a newer one
                return blob.download_as_bytes(if_generation_match=generation), str(generation)
            except (self.missing, self.lost):
                continue  # replaced between its metadata and its bytes: read the new one
        raise RuntimeError(f"gs://{bucket}/{key}: replaced {READ_TRIES} times while being read; try again")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._blob(bucket, key).upload_from_string(data)

    def put_if(self, bucket: str, key: str, data: bytes, version: str | None) -> bool:
        try:
            self._blob(bucket, key).upload_from_string(data, if_generation_match=int(version or 0))
        except self.lost:
            return False
        return True

    def is_object(self, bucket: str, key: str) -> bool:
        return bool(key) and self._blob(bucket, key).exists()

    def keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        for blob in self.client.list_blobs(bucket, prefix=prefix):
            yield blob.name, blob.size

    def children(self, bucket: str, prefix: str) -> set[str]:
        listing = self.client.list_blobs(bucket, prefix=prefix, delimiter="/")
        names = {blob.name[len(prefix) :] for blob in listing}  # the prefixes are known once read
        return names | {p[len(prefix) :].rstrip("/") for p in listing.prefixes}

    def delete(self, bucket: str, key: str, under: list[str]) -> None:
        def one(name: str) -> None:
            try:
                self._blob(bucket, name).delete()
            except self.missing:  # deleted by another cleaner meanwhile
                pass

        names = [f"{key}/{rel}" for rel in under] + ([key] if self.is_object(bucket, key) else [])
        with ThreadPoolExecutor(DELETE_THREADS) as pool:  # one request per object: overlap them
            list(pool.map(one, names))

    def download(self, bucket: str, key: str, dest: Path) -> None:
        self._blob(bucket, key).download_to_filename(str(dest))

    def upload(self, src: Path, bucket: str, key: str) -> None:
        self._blob(bucket, key).upload_from_filename(str(src))
