"""Shared fixtures: paths to the shared golden data, seeded generators, Dask clusters
and an S3 server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "data" / "golden"
BAV = SHARED / "data" / "bav_ncsn_1984"


@pytest.fixture
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden data folder not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture
def bav_dir() -> Path:
    if not BAV.is_dir():
        pytest.fail(f"BAV waveform folder not found at {BAV}")
    return BAV


@pytest.fixture
def rng(request) -> np.random.Generator:
    seed = 20181
    print(f"rng seed {seed} for {request.node.name}")
    return np.random.default_rng(seed)


@pytest.fixture
def local_cluster():
    """An in-process Dask cluster on 127.0.0.1 (one worker, one thread) and its client."""
    import distributed

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
        host="127.0.0.1", dashboard_address="127.0.0.1:0",
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        yield cluster, client


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A ``dask scheduler`` in its own process on 127.0.0.1, for one test module; the
    tests start (and kill) its workers (tests/workerprocesses.py)."""
    from workerprocesses import start_scheduler

    started = start_scheduler(tmp_path_factory.mktemp("dask-cluster"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(cluster):
    """A client of :func:`cluster`'s scheduler."""
    import distributed
    from workerprocesses import WAIT_S

    with distributed.Client(cluster.address, timeout=WAIT_S) as connected:
        yield connected


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on 127.0.0.1 (in its own process), with IAM enforced.

    Attributes
    ----------
    endpoint : str
        Its URL.
    options : dict
        Storage options of a user who may do anything.
    reader : dict
        Storage options of a user who may only read.
    """

    endpoint: str
    options: dict
    reader: dict

    @contextlib.contextmanager
    def enforcing_iam(self) -> Iterator[None]:
        """Inside the block moto checks each request's signature and its user's policy
        (outside it, not: moto's check rejects listings with a delimiter, which Zarr
        makes)."""
        import requests

        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=5)
        try:
            yield
        finally:
            requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"inf", timeout=5)

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (as the first user); return it."""
        import boto3

        boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.options["key"], aws_secret_access_key=self.options["secret"],
        ).create_bucket(Bucket=name)  # fmt: skip
        return name


def _iam_user(iam, name: str, actions: list[str]) -> dict:
    """Storage options of a new IAM user allowed ``actions`` on every resource."""
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's server (``python -m moto.server``, as s3fs's own tests run it) on a free port
    of 127.0.0.1, with two IAM users (see :meth:`S3Server.enforcing_iam`)."""
    import boto3
    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    # dummy credentials: nothing may reach a real AWS account from the tests
    saved = {name: os.environ.get(name) for name in _AWS_VARIABLES}
    os.environ.update(dict(zip(_AWS_VARIABLES, ("testing", "testing", "us-east-1"), strict=True)))
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        owner = _iam_user(iam, "owner", ["s3:*"])
        reader = _iam_user(iam, "reader", ["s3:GetObject", "s3:ListBucket"])
        yield S3Server(
            endpoint,
            {"endpoint_url": endpoint, **owner},
            # one request per read: s3fs sizes an object first otherwise, and lists its
            # prefix on a 404, which moto's signature check rejects
            {"endpoint_url": endpoint, "max_concurrency": 1, **reader},
        )
    finally:
        server.kill()
        server.wait()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
