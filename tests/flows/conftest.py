"""The session's Prefect test server, ``prefect_harness``, lives in tests/conftest.py (the
reliability tests share it). The S3 tests of several modules share the local S3 server
fixture, ``s3``."""

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A local S3-compatible server (moto's server mode) on 127.0.0.1 with one bucket,
    ``linkstyle-test``; the credentials and endpoint are the usual AWS environment variables,
    set for this process and for the command lines a test starts. fsspec's cached s3
    filesystems are dropped first: one cached by an earlier module would still point at that
    module's stopped server."""
    pytest.importorskip("s3fs", reason="the s3 extra is not installed")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    import fsspec

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            fsspec.get_filesystem_class("s3").clear_instance_cache()
            fs = fsspec.filesystem("s3", use_listings_cache=False)
            if not fs.exists("linkstyle-test"):  # moto keeps its buckets per process
                fs.mkdir("linkstyle-test")
            yield env
            fsspec.get_filesystem_class("s3").clear_instance_cache()
    finally:
        server.stop()
