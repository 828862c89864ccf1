"""Ray 2.60's side of core/bench/storage/compare: a checkpoint of one file of
N random bytes uploaded to S3 and downloaded back, through the same calls
Ray Train makes.

Ray Train (V2, the default in 2.60: RAY_TRAIN_V2_ENABLED) persists a
reported checkpoint in `TrainContext._upload_checkpoint`, which calls
`StorageContext.persist_current_checkpoint(checkpoint, checkpoint_dir_name)`
from ray/train/v2/_internal/execution/storage.py: a `create_dir`, then
`pyarrow.fs.copy_files` into the run's storage filesystem (64 MiB chunks,
`use_threads=False` for S3 uploads). A restored checkpoint is read with
`Checkpoint.to_directory()`, which takes a file lock and calls
`_download_from_fs_path` (ray/train/_internal/storage.py), again
`pyarrow.fs.copy_files`. Both are timed here, nothing else.

The storage filesystem is a `pyarrow.fs.S3FileSystem` configured from the
same variables rayforge's S3 client reads (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) with the same
timeouts as rayforge's client, passed the way a user passes one to Ray
(`RunConfig(storage_filesystem=...)`).

    python ray_checkpoint_s3.py --uri s3://bucket/prefix --bytes 10000000 --rounds 3

Prints one JSON line: GB/s (1e9 bytes/s) of upload and download, the best
round (as `rayforge storage-benchmark` reports) and the median.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from urllib.parse import urlparse

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

import pyarrow.fs  # noqa: E402

import ray  # noqa: E402
from ray.train import Checkpoint  # noqa: E402
from ray.train.v2._internal.execution.storage import StorageContext  # noqa: E402


def s3_filesystem() -> pyarrow.fs.S3FileSystem:
    """An S3FileSystem for the server AWS_ENDPOINT_URL names."""
    endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
    return pyarrow.fs.S3FileSystem(
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme or "http",
        # rayforge's client waits 5 s to connect and 120 s for a request.
        # The AWS SDK's default of 3 s per request is too short for moto's
        # CompleteMultipartUpload of a 1 GB object (about 10 s): the SDK
        # retries it, moto fails the retries, and copy_files returns before
        # the object exists, so the upload would be timed too short.
        connect_timeout=5,
        request_timeout=120,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True, help="s3://bucket/prefix")
    p.add_argument("--bytes", type=int, default=10_000_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    u = urlparse(args.uri)
    if u.scheme != "s3" or not u.netloc:
        p.error(f"--uri must be s3://bucket/prefix, not {args.uri!r}")
    storage_path = (u.netloc + u.path).rstrip("/")
    experiment = f"ray-storage-benchmark-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    fs = s3_filesystem()
    # Ray Train's own context for the run (writes its validation marker,
    # as a trainer's start does; not timed).
    storage = StorageContext(
        storage_path=storage_path,
        experiment_dir_name=experiment,
        storage_filesystem=fs,
    )

    scratch = tempfile.mkdtemp(prefix="ray-storage-bench-")
    try:
        # The checkpoint a worker reports: a local directory with one file
        # of random bytes (written once; not timed).
        src = os.path.join(scratch, "checkpoint")
        os.makedirs(src)
        with open(os.path.join(src, "model.bin"), "wb") as f:
            left = args.bytes
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n
        local = Checkpoint.from_directory(src)

        ups, downs = [], []
        for r in range(max(1, args.rounds)):
            t = time.perf_counter()
            persisted = storage.persist_current_checkpoint(local, f"checkpoint_{r + 1:06d}")
            ups.append(time.perf_counter() - t)

            # A cold reader: a fresh directory, as on another node.
            dest = os.path.join(scratch, f"restored_{r + 1}")
            t = time.perf_counter()
            got = persisted.to_directory(dest)
            downs.append(time.perf_counter() - t)
            size = os.path.getsize(os.path.join(got, "model.bin"))
            if size != args.bytes:
                raise SystemExit(f"downloaded {size} bytes, expected {args.bytes}")
            shutil.rmtree(dest, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            fs.delete_dir(storage.experiment_fs_path)
        except OSError:
            pass

    def gbps(secs: float) -> float:
        return args.bytes / max(secs, 1e-9) / 1e9

    print(
        json.dumps(
            {
                "side": f"ray {ray.__version__}",
                "uri": f"s3://{storage.experiment_fs_path}",
                "bytes": args.bytes,
                "rounds": len(ups),
                "upload_gbps_best": round(gbps(min(ups)), 4),
                "upload_gbps_median": round(gbps(statistics.median(ups)), 4),
                "download_gbps_best": round(gbps(min(downs)), 4),
                "download_gbps_median": round(gbps(statistics.median(downs)), 4),
                "upload_s": [round(s, 4) for s in ups],
                "download_s": [round(s, 4) for s in downs],
            }
        )
    )


if __name__ == "__main__":
    main()
