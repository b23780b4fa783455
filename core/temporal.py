"""The one Temporal client factory: data converter, TLS/API key and timeouts in one place."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.service import RetryConfig, TLSConfig

from core.codec import EncryptionCodec, parse_keys
from core.config import Settings
from core.domain import DependencyUnavailable
from core.metrics import worker_runtime
from core.tracing import client_interceptors

log = structlog.get_logger(__name__)


def payload_codec(settings: Settings) -> EncryptionCodec:
    """The AES-256-GCM codec with the keys from settings (also used by the gateway's /codec)."""
    return EncryptionCodec(parse_keys(settings.codec_keys), settings.codec_active_key)


def data_converter(settings: Settings) -> DataConverter:
    """Pydantic payloads, encrypted with the settings' keys; failure messages and stack traces are
    encoded too (the default failure converter would store them in plain text).

    Every client and worker of the platform (and the tests and replay) must use this one.
    """
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=payload_codec(settings),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def _tls(settings: Settings) -> TLSConfig | bool:
    if not settings.temporal_tls:
        return bool(settings.temporal_api_key)  # API keys (Temporal Cloud) are only sent over TLS

    def read(path):
        return path.read_bytes() if path else None

    return TLSConfig(
        server_root_ca_cert=read(settings.temporal_tls_server_ca_path),
        client_cert=read(settings.temporal_tls_client_cert_path),
        client_private_key=read(settings.temporal_tls_client_key_path),
    )


def _connect_options(settings: Settings, *, for_worker: bool = False) -> dict[str, Any]:
    return {
        "target_host": settings.temporal_address,
        "namespace": settings.temporal_namespace,
        "data_converter": data_converter(settings),
        "tls": _tls(settings),
        "api_key": settings.temporal_api_key,
        "interceptors": client_interceptors(),
        "runtime": worker_runtime(settings) if for_worker else None,
        "retry_config": RetryConfig(max_retries=3, max_elapsed_time_millis=int(settings.temporal_rpc_timeout_s * 1000)),
    }


async def connect_client(settings: Settings, *, for_worker: bool = False) -> Client:
    """Connect to Temporal with the platform's data converter.

    ``for_worker=True`` serves the SDK's Prometheus metrics on ``ORDERS_WORKER_METRICS_PORT``
    (when set). The gateway connects through :class:`TemporalConnection` instead.
    """
    return await Client.connect(**_connect_options(settings, for_worker=for_worker))


class TemporalConnection:
    """The gateway's Temporal client, connected on first use and then kept.

    The gateway must start, and answer 503, while Temporal is down, so nothing connects at startup.
    The SDK's lazy client would connect inside the first call and report a failure only as an
    untyped ``RuntimeError`` (its text is all that tells it apart); here the connection is made
    on its own, within ``temporal_rpc_timeout_s``, and a failure is :class:`DependencyUnavailable`.
    Concurrent first calls share one attempt; after a failed attempt the next call tries again.
    """

    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        """``client``: one already connected (tests, or a composition root that connected itself).
        The connection's options (codec keys, TLS files) are read here, so a misconfigured gateway
        fails at startup rather than at its first order."""
        self._settings = settings
        self._options = _connect_options(settings) if client is None else {}
        self._client = client
        self._attempt: asyncio.Task[Client] | None = None

    async def client(self) -> Client:
        """The connected client; raises DependencyUnavailable when Temporal cannot be reached now."""
        if self._client is not None:
            return self._client
        if self._attempt is None:
            self._attempt = asyncio.ensure_future(self._connect())
            self._attempt.add_done_callback(self._attempt_done)
        # Shielded: a caller that gives up (its request timed out) does not cancel the others' attempt.
        return await asyncio.shield(self._attempt)

    async def _connect(self) -> Client:
        settings = self._settings
        try:
            return await asyncio.wait_for(Client.connect(**self._options), settings.temporal_rpc_timeout_s)
        except (RuntimeError, TimeoutError) as error:
            # Client.connect reports every way of not connecting (refused, TLS handshake, the first
            # get_system_info call) as RuntimeError, and nothing but the connecting runs here.
            log.warning("cannot connect to Temporal", address=settings.temporal_address, error=str(error))
            raise DependencyUnavailable("workflow service") from error

    def _attempt_done(self, attempt: asyncio.Task[Client]) -> None:
        self._attempt = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._client = attempt.result()
