"""Property-based contract test: schemathesis (v4 CLI) against the live gateway on a real port.

No 5xx, every response matches the documented status codes, content types, headers and schemas,
and requests without credentials are refused. ``positive_data_acceptance`` is excluded: a body can
be schema-valid and still be refused by business rules (unknown SKU, another customer's order).
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvicorn

from api.app import create_app
from core.tokens import mint_token
from devstack.processes import free_port


@pytest.fixture
async def fuzz_gateway(it_settings, temporal_client, engine):
    port = free_port()
    settings = it_settings.model_copy(
        update={
            "api_port": port,
            "task_queue": "schemathesis",
            "rate_limit_submit": "100000/minute",
            "rate_limit_read": "100000/minute",
            "rate_limit_webhook": "100000/minute",
        }
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, engine=engine, client=temporal_client),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}", settings
    server.should_exit = True
    await task


async def test_schemathesis_finds_nothing(fuzz_gateway, tmp_path):
    base_url, settings = fuzz_gateway
    token = mint_token(settings, "schemathesis-customer", "customer", ttl_s=600)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base_url}/openapi.json",
        "--url",
        base_url,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        "15",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "20251125",
        "--request-timeout",
        "15",
        "--suppress-health-check",
        "all",
        "--no-color",
        # The payload-codec router (Temporal UI) belongs to another change still in progress.
        "--exclude-path-regex",
        "^/codec",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=150)
    except TimeoutError:
        process.kill()
        raise
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-12000:]
