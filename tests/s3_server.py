"""A real S3 API on loopback for the storage tests: moto's standalone server (werkzeug, HTTP on
127.0.0.1, a free port), with endpoint and credentials in the environment the way a user sets
them for any S3-compatible store (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). pyarrow.fs - and so
mahler_dist.storage and Ray Train's storage_path - read the same variables.

Set the environment before Ray starts: Ray's worker processes inherit the environment of the
process that starts the raylet."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def s3_server(bucket: str = "mahler"):
    """Yields the environment it set ({"AWS_ENDPOINT_URL", ...}) with `bucket` created; restores
    the environment and stops the server after."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload_folder(local: Path, uri: str, pattern: str = "*.mid") -> int:
    """Copy local/**/pattern to the URI (through the project's own storage layer); returns the count."""
    from mahler_dist import storage

    files = sorted(Path(local).rglob(pattern))
    for f in files:
        storage.write_bytes(storage.join(uri, f.relative_to(local).as_posix()), f.read_bytes())
    return len(files)
