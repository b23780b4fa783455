"""One settings object for every process of the platform (prefix ``ORDERS_``).

Nothing is built at import time: composition roots call :func:`get_settings`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-secret-change-me-0123456789abcdef"
DEV_WEBHOOK_SECRET = "dev-only-webhook-secret-change-me"
# Payload encryption key for development and tests only; refused in production.
DEV_CODEC_KEYS = "dev-2026:Mo5SMVV2kagOA7q9XSdvrjJjjnAzsTaYwYDaE1oC2Q8="
# A region name appears in SQL object names (publications, subscriptions) unquoted.
REGION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Settings(BaseSettings):
    """Platform settings. Every field can be set as ``ORDERS_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ORDERS_", env_file=".env", extra="ignore")

    environment: str = Field("development", description="development, test or production")

    # Where the embedded services keep their data (`orders dev`).
    data_dir: Path = Path(".data")

    # PostgreSQL. Empty means: the embedded server that `orders dev` starts.
    database_url: str = ""
    database_pool_size: int = 10
    database_max_overflow: int = 10
    database_timeout_s: float = 5.0

    # Temporal.
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_rpc_timeout_s: float = 5.0
    temporal_tls: bool = False
    temporal_tls_client_cert_path: Path | None = None
    temporal_tls_client_key_path: Path | None = None
    temporal_tls_server_ca_path: Path | None = None
    temporal_api_key: str | None = None

    # Task queues: the workflows run on `task_queue`; activities on `<task_queue>-inventory`,
    # `-payments` and `-shipping`, so each concern scales and throttles on its own.
    task_queue: str = "orders"
    payments_max_per_second: float = 50.0
    shipping_max_per_second: float = 50.0
    worker_shutdown_grace_s: float = 30.0
    # Prometheus endpoint of the Temporal SDK runtime in worker processes (SDK and business metrics);
    # None: no endpoint. Gateways serve their metrics on /metrics instead.
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "0.0.0.0"
    # Worker tuning (see docs/performance.md for the measurements behind the defaults). None keeps
    # the Temporal SDK's default.
    worker_max_concurrent_workflow_tasks: int | None = None
    worker_max_concurrent_activities: int | None = None
    worker_max_concurrent_local_activities: int | None = None
    worker_max_cached_workflows: int | None = None  # sticky cache size (0 disables sticky execution)
    worker_workflow_task_pollers: int | None = None
    worker_activity_task_pollers: int | None = None

    # Business rules, snapshotted into each order when it is submitted.
    review_threshold_minor: int = 100_000  # 1000.00 in the catalogue currency
    review_timeout_s: float = 24 * 3600
    delivery_deadline_s: float = 7 * 24 * 3600
    # An order only partly in stock waits this long for the customer to amend or cancel it.
    customer_response_timeout_s: float = 24 * 3600

    # Providers (the sandbox by default).
    payment_base_url: str = "http://127.0.0.1:8100/payments"
    carrier_base_url: str = "http://127.0.0.1:8100/carrier"
    provider_connect_timeout_s: float = 2.0
    provider_read_timeout_s: float = 4.0

    # Gateway.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "orders-dev"
    jwt_audience: str = "orders-api"
    jwt_jwks_url: str | None = None
    jwt_algorithms: list[str] = ["HS256"]  # with a JWKS URL and no explicit choice: RS256, ES256
    jwt_jwks_cache_s: float = 300.0  # fetched signing keys are trusted this long
    jwt_jwks_timeout_s: float = 3.0
    carrier_webhook_secret: str = DEV_WEBHOOK_SECRET
    carrier_webhook_tolerance_s: int = 300
    idempotency_retention_s: int = 24 * 3600
    # The sweeper of expired Idempotency-Key records (core/key_sweeper.py), run by every gateway
    # replica, one at a time (advisory lock): every interval, batches of at most batch_size, at
    # most max_batches per run; a record goes grace seconds after it expired. Interval 0: off.
    idempotency_sweep_interval_s: float = Field(60.0, ge=0)
    idempotency_sweep_batch_size: int = Field(1000, ge=1)
    idempotency_sweep_max_batches: int = Field(100, ge=1)
    idempotency_sweep_grace_s: float = Field(300.0, ge=0)
    # How long cancel/amend/review/address changes wait in all for the workflow to accept and finish
    # the change: accepted but not finished by then -> 202 with the order as it is (the change will
    # finish); not even accepted -> 503 + Retry-After. Keep it below api_request_timeout_s.
    update_wait_s: float = 4.0
    max_body_bytes: int = 64 * 1024
    rate_limit_storage: str = "memory://"
    rate_limit_submit: str = "100/minute"
    rate_limit_read: str = "600/minute"
    rate_limit_webhook: str = "1200/minute"
    # Load shedding per gateway process (api/overload.py): requests handled at once, and the time
    # after which a request is answered 503 + Retry-After (its handler still finishes).
    api_max_in_flight: int = Field(200, ge=1)
    api_request_timeout_s: float = Field(5.0, gt=0)
    api_max_event_loop_lag_s: float = Field(1.0, gt=0)  # shed new requests while the loop is this late
    # A shed caller's Retry-After grows with the overload (1 + shed // served over the last 5 s) up
    # to this, so that shed callers coming back do not by themselves exceed what the gateway serves.
    api_max_retry_after_s: int = Field(30, ge=1)
    # Admission control (api/backlog.py): submissions get 503 `backlogged` + Retry-After while the
    # oldest order not yet started by any worker has waited longer than this (0: never refused on
    # this ground); the workers' backlog is read every api_backlog_check_s.
    api_max_start_delay_s: float = Field(10.0, ge=0)
    api_backlog_check_s: float = Field(1.0, gt=0)
    rate_limit_timeout_s: float = 0.5  # a slower or unreachable storage lets the request through
    # Long-polls (GET /v1/orders/{id}?wait=...): the longest wait this process grants (callers may
    # ask for up to 30 s), how many it holds at once (503 + Retry-After beyond; a waiter costs a
    # socket and a few kilobytes, and the gateway raises its open-files limit to fit), and how often it
    # re-checks the orders they wait on in case a change notification was lost.
    api_max_wait_s: int = Field(30, ge=0, le=30)
    api_max_waiters: int = Field(10_000, ge=0)
    api_wait_recheck_s: float = Field(2.0, gt=0)
    # Peers whose X-Forwarded-For is believed (IP addresses or CIDR ranges); others count by peer IP.
    trusted_proxies: list[str] = []

    # Regions (docs/regions.md). A region is a complete cell; every customer has one home region and
    # its orders are written only there. Without peers the platform is one region and nothing of
    # this applies (no forwarding, no directory look-ups, no heartbeats).
    region: str = ""  # this region's name: a lower-case identifier, e.g. "eu" or "a"
    # Peer region name -> base URL of its gateway (requests for customers homed there go to it).
    region_peers: dict[str, str] = {}
    # Peer region name -> libpq DSN (postgresql://user@host:port/db) this region's PostgreSQL uses to
    # subscribe to the peer's order read model (`orders regions link`).
    region_peer_database_urls: dict[str, str] = {}
    # A forwarded request gets at most this long to connect and this long in all to get its answer's
    # headers; past it, a write is answered 503 + Retry-After and a read from the local replica.
    region_forward_connect_timeout_s: float = Field(0.5, gt=0)
    region_forward_timeout_s: float = Field(1.5, gt=0)
    region_retry_after_s: int = Field(5, ge=1)
    # How often the gateway stamps this region's heartbeat row (replicated: the peers' replica lag).
    region_heartbeat_s: float = Field(1.0, gt=0)

    # Sandbox providers (`orders sandbox`).
    sandbox_host: str = "127.0.0.1"
    sandbox_port: int = 8100
    sandbox_database_url: str = ""  # empty: same database as the platform
    sandbox_delivery_delay_s: float = 2.0
    sandbox_auto_deliver: bool = True
    sandbox_carrier_webhook_url: str = "http://127.0.0.1:8000/v1/carrier/events"
    sandbox_slow_delay_s: float = 6.0
    sandbox_error_rate: float = 0.0
    sandbox_timeout_rate: float = 0.0
    sandbox_latency_ms: int = 0

    # Payload encryption (core/codec.py): kid:base64 keys, all accepted for decryption; new
    # payloads use the active one. The codec endpoint (/codec) serves the Temporal UI.
    codec_keys: str = DEV_CODEC_KEYS
    codec_active_key: str = "dev-2026"
    codec_cors_origins: list[str] = ["http://127.0.0.1:8233", "http://localhost:8233"]
    # The dev UI (`temporal server start-dev --ui-codec-endpoint`) sends no credentials: allow
    # anonymous codec calls from loopback addresses. Ignored in production (always authenticated).
    codec_allow_local_anonymous: bool = True

    # Logging.
    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON unless stdout is a terminal

    # Observability. Tracing is exported over OTLP/HTTP only when an endpoint is set
    # (e.g. http://otel-collector:4318); without one, tracing calls are no-ops.
    otlp_endpoint: str | None = None
    otlp_headers: dict[str, str] = {}
    service_name: str = "orders"
    metrics_enabled: bool = True  # /metrics on the gateway
    api_shutdown_grace_s: float = 20.0  # in-flight HTTP requests may finish within this on SIGTERM
    # An order is "stuck" when it has not moved for this long (waiting statuses: past their own
    # deadline plus this); the gateway reports stuck orders from the read model on /metrics.
    stuck_order_after_s: float = 900.0

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, value: str) -> str:
        if value not in {"development", "test", "production"}:
            raise ValueError("environment must be development, test or production")
        return value

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Settings:
        if self.environment == "production":
            if self.jwt_secret == DEV_JWT_SECRET and not self.jwt_jwks_url:
                raise ValueError("ORDERS_JWT_SECRET (or ORDERS_JWT_JWKS_URL) must be set in production")
            if self.carrier_webhook_secret == DEV_WEBHOOK_SECRET:
                raise ValueError("ORDERS_CARRIER_WEBHOOK_SECRET must be set in production")
        return self

    @model_validator(mode="after")
    def _token_algorithms_match_the_key_source(self) -> Settings:
        # Algorithm confusion: a shared secret must never verify a token meant for public keys.
        if self.jwt_jwks_url:
            if "jwt_algorithms" not in self.model_fields_set:
                self.jwt_algorithms = ["RS256", "ES256"]
            if any(not alg.startswith(("RS", "ES", "PS")) for alg in self.jwt_algorithms):
                raise ValueError("with ORDERS_JWT_JWKS_URL only RS*/ES*/PS* algorithms are allowed")
        elif any(not alg.startswith("HS") for alg in self.jwt_algorithms):
            raise ValueError("without ORDERS_JWT_JWKS_URL only HS* algorithms (shared secret) are allowed")
        return self

    @model_validator(mode="after")
    def _codec_keys_usable(self) -> Settings:
        from core.codec import parse_keys  # validates format and length; the message is the error

        keys = parse_keys(self.codec_keys)
        if self.codec_active_key not in keys:
            raise ValueError(f"ORDERS_CODEC_ACTIVE_KEY {self.codec_active_key!r} is not in ORDERS_CODEC_KEYS")
        if self.environment == "production":
            if set(parse_keys(DEV_CODEC_KEYS).values()) & set(keys.values()):
                raise ValueError("ORDERS_CODEC_KEYS must not contain the development key in production")
        return self

    @model_validator(mode="after")
    def _regions_consistent(self) -> Settings:
        names = [self.region, *self.region_peers] if self.region else list(self.region_peers)
        for name in names:
            if not REGION_NAME.match(name):
                raise ValueError(
                    f"region name {name!r} must be a lower-case identifier (a-z, 0-9, _; at most 32, a letter first)"
                )
        if self.region_peers and not self.region:
            raise ValueError("ORDERS_REGION must name this region when ORDERS_REGION_PEERS is set")
        if self.region in self.region_peers:
            raise ValueError(f"ORDERS_REGION_PEERS must not name this region ({self.region!r})")
        unknown = set(self.region_peer_database_urls) - set(self.region_peers)
        if unknown:
            raise ValueError(f"ORDERS_REGION_PEER_DATABASE_URLS names regions that are no peers: {sorted(unknown)}")
        if self.region_forward_connect_timeout_s > self.region_forward_timeout_s:
            raise ValueError("ORDERS_REGION_FORWARD_CONNECT_TIMEOUT_S must not exceed ORDERS_REGION_FORWARD_TIMEOUT_S")
        return self

    @property
    def multi_region(self) -> bool:
        """Whether this region has peers (forwarding, the home directory and heartbeats are on)."""
        return bool(self.region_peers)

    @property
    def regions(self) -> list[str]:
        """Every region's name, sorted: the same list in every region of one deployment."""
        return sorted({self.region, *self.region_peers}) if self.region else []

    @property
    def effective_sandbox_database_url(self) -> str:
        return self.sandbox_database_url or self.database_url


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[f"ORDERS_{name.upper()}"] = json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
    return env


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
