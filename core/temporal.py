"""The one Temporal client factory: data converter, TLS/API key and timeouts in one place."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.service import RetryConfig, TLSConfig

from core.codec import EncryptionCodec, parse_keys
from core.config import Settings
from core.metrics import worker_runtime
from core.tracing import client_interceptors


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


async def connect_client(settings: Settings, *, lazy: bool = False, for_worker: bool = False) -> Client:
    """Connect to Temporal with the platform's data converter.

    ``lazy=True`` returns at once and connects on first use, so a gateway can start (and answer
    503 from ``/readyz``) while Temporal is still down. ``for_worker=True`` serves the SDK's
    Prometheus metrics on ``ORDERS_WORKER_METRICS_PORT`` (when set).
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        tls=_tls(settings),
        api_key=settings.temporal_api_key,
        lazy=lazy,
        interceptors=client_interceptors(),
        runtime=worker_runtime(settings) if for_worker else None,
        retry_config=RetryConfig(max_retries=3, max_elapsed_time_millis=int(settings.temporal_rpc_timeout_s * 1000)),
    )


def rpc_timeout(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.temporal_rpc_timeout_s)
