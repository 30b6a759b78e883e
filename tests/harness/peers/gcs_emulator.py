"""gcp-storage-emulator in a subprocess on 127.0.0.1 (in memory), and offline service-account signing credentials.

Client recipe (SPEC section 10: always pass `timeout=` and `retry=`, or a dead server costs ~2 minutes)::

    client = storage.Client(project="test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": emulator.url})
    client.bucket(name).blob("a.txt").upload_from_string(b"x", timeout=2, retry=None)
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import subprocess
import sys
import time
from typing import Any

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from tests.harness.peers._net import LOOPBACK, free_port

logger = logging.getLogger(__name__)

PROJECT = "oriel-test"


class GCSEmulator:
    """A gcp-storage-emulator subprocess; `url` is what `api_endpoint` / `STORAGE_EMULATOR_HOST` should be."""

    def __init__(self, *, startup_timeout: float = 20.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:43210."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> GCSEmulator:
        """Spawn the emulator in memory and wait for its health check to answer."""
        self.port = free_port()
        command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", LOOPBACK]
        command += ["--port", str(self.port), "--in-memory", "--quiet"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(f"gcp-storage-emulator exited with {self._process.returncode}: {stderr[-2000:]}")
            try:
                if requests.get(self.url + "/", timeout=0.5).ok:
                    return self
            except requests.RequestException:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"gcp-storage-emulator not ready on {self.url} after {self.startup_timeout}s")
            time.sleep(0.05)

    def wipe(self) -> None:
        """Delete every bucket and object (the emulator's own `GET /wipe`)."""
        requests.get(self.url + "/wipe", timeout=5).raise_for_status()

    def client(self, endpoint: str | None = None, *, background_metadata: bool = False) -> storage.Client:
        """A real google-cloud-storage client for the emulator, or for `endpoint` (e.g. a fault proxy in front)."""
        return storage_client(endpoint or self.url, background_metadata=background_metadata)

    def stop(self) -> None:
        """Terminate the subprocess (kill it if it lingers)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None


def storage_client(endpoint: str, project: str = PROJECT, *, background_metadata: bool = False) -> storage.Client:
    """A google-cloud-storage client pointed at `endpoint` with anonymous credentials (no env var needed).

    google-cloud-storage 3.17 starts a daemon thread on a client's first call per bucket that GETs the bucket
    metadata for tracing, with the default retry (up to ~2 minutes against a dead server). Its requests show up
    in fault-proxy counts, so it is off unless `background_metadata=True`. (The public switch is the environment
    variable DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA=true.)
    """
    client = storage.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )
    if not background_metadata:
        client._bucket_metadata_cache = None  # the SDK checks this attribute before every lookup
    return client


def unique_bucket_name(prefix: str = "oriel-test") -> str:
    """A valid, collision-free bucket name."""
    return f"{prefix}-{secrets.token_hex(6)}"


def fake_service_account_info(project: str = PROJECT) -> dict[str, Any]:
    """Service-account JSON with a freshly generated RSA key: enough to sign URLs offline, useless online."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": f"oriel-signer@{project}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbelow(10**20)),
        "token_uri": "https://oauth2.googleapis.com/token",  # never contacted: signing is local
    }


def signing_credentials(project: str = PROJECT) -> service_account.Credentials:
    """Credentials for `blob.generate_signed_url(..., credentials=...)`."""
    return service_account.Credentials.from_service_account_info(fake_service_account_info(project))


def signed_download_url(
    blob: storage.Blob, credentials: service_account.Credentials, endpoint: str, *, minutes: int = 5
) -> str:
    """A v4 signed GET URL for `blob` served by `endpoint` (the emulator answers GET /<bucket>/<object>)."""
    return blob.generate_signed_url(
        version="v4",
        expiration=dt.timedelta(minutes=minutes),
        method="GET",
        credentials=credentials,
        api_access_endpoint=endpoint,
    )
