"""pytest fixtures for the local peers (loaded by `pytest_plugins` in tests/conftest.py).

Subprocess peers (localstripe, the storage emulator) start once per session and are reset around every test;
in-thread peers (Stripe Checkout, SendGrid, webhook receiver, fault proxies) are cheap and start per test.
Everything binds 127.0.0.1 and is stopped at teardown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from google.api_core import exceptions as google_exceptions
from google.oauth2 import service_account

from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.gcs_emulator import GCSEmulator, signing_credentials, unique_bucket_name
from tests.harness.peers.localstripe_peer import LocalStripe
from tests.harness.peers.otlp import OTLPReceiver
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.peers.stripe_peer import StripePeer
from tests.harness.peers.webhook_receiver import WebhookReceiver


@pytest.fixture
def make_fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Factory: `make_fault_proxy(peer.url, max_hold=30.0)` → a started FaultProxy, stopped after the test."""
    proxies: list[FaultProxy] = []

    def factory(upstream: str, **options: float) -> FaultProxy:
        proxy = FaultProxy(upstream, **options).start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def stripe_peer() -> Iterator[StripePeer]:
    """A fresh Stripe Checkout peer (in-thread) for this test."""
    peer = StripePeer().start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def localstripe_server() -> Iterator[LocalStripe]:
    """The session's localstripe subprocess (use `localstripe`, which also empties it per test)."""
    server = LocalStripe().start()
    yield server
    server.stop()


@pytest.fixture
def localstripe(localstripe_server: LocalStripe) -> LocalStripe:
    """localstripe with an empty store (customers, payment intents, payment methods, charges)."""
    localstripe_server.reset()
    return localstripe_server


@pytest.fixture
def sendgrid_peer() -> Iterator[SendGridPeer]:
    """A fresh SendGrid mail/send peer (in-thread) for this test."""
    peer = SendGridPeer().start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GCSEmulator]:
    """The session's gcp-storage-emulator subprocess (in memory); isolate tests with `gcs_bucket`."""
    emulator = GCSEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator: GCSEmulator) -> Iterator[str]:
    """The name of a bucket created for this test (deleted with its objects afterwards)."""
    client = gcs_emulator.client()
    name = unique_bucket_name()
    client.create_bucket(name, timeout=5, retry=None)
    yield name
    bucket = client.bucket(name)
    for blob in client.list_blobs(name, timeout=5, retry=None):
        blob.delete(timeout=5, retry=None)
    with contextlib.suppress(google_exceptions.NotFound):  # the test may have deleted it itself
        bucket.delete(timeout=5, retry=None)


@pytest.fixture(scope="session")
def gcs_signing_credentials() -> service_account.Credentials:
    """Offline service-account credentials (a generated RSA key) for `blob.generate_signed_url`."""
    return signing_credentials()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A fresh recording webhook endpoint (in-thread) for this test."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A fresh OTLP/HTTP traces receiver (in-thread) for this test."""
    receiver = OTLPReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
    """Factory of real audio files (cached for the session): `audio_files.make("mp3", seconds=2)`."""
    return AudioFactory(tmp_path_factory.mktemp("audio"))
