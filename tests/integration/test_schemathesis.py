"""Property-based contract test: schemathesis (v4 CLI) against the published OpenAPI document of the
live gateway on a real port, as an outside client would run it.

Every published operation, with a customer's and an operator's token, through all four phases
(examples, coverage, fuzzing, and stateful: submit -> read -> cancel / change address / review
along the document's links, with a worker running the orders). Strings may hold NUL. No 5xx, every
answer matches the documented status codes, content types, headers and schemas, and requests
without credentials are refused. ``positive_data_acceptance`` is excluded: a body can be
schema-valid and still be refused by business rules (unknown SKU, another customer's order).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid

import httpx
import pytest
import uvicorn

from api.app import create_app
from core.db.catalog import upsert_products
from core.tokens import mint_token
from devstack.processes import free_port

CUSTOMER = "schemathesis-customer"
ADDRESS = {"name": "Ada", "line1": "Street 1", "line2": None, "city": "Berlin", "postal_code": "10117", "country": "DE"}
# Known SKUs and approving or declining payment tokens, mixed into generated bodies so that
# submissions get past the catalogue and the stateful phase has orders to follow.
CONFIG = """
[dictionaries.skus]
values = {skus}

[dictionaries.payment-tokens]
values = ["tok_ok", "tok_decline"]

[parameters]
"body.items[*].sku" = {{ dictionary = "skus", probability = 0.7 }}
"body.payment_token" = {{ dictionary = "payment-tokens", probability = 0.5 }}

[phases.stateful]
max-steps = 6
"""


@pytest.fixture
async def fuzz_gateway(it_settings, temporal_client, engine, workers):
    """The gateway as production runs it (codec calls need an operator's token from anywhere), with
    the workers of the integration session behind it."""
    port = free_port()
    # Long-polls answer within 2 s (the server may cap `wait`): generated waits of up to 30 s on
    # an order that never reaches the generated `until` must not run into the 15 s request timeout.
    settings = it_settings.model_copy(
        update={"api_port": port, "codec_allow_local_anonymous": False, "api_max_wait_s": 2}
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


@pytest.fixture
async def skus(engine) -> list[str]:
    """Products of this test only: a cheap one, and one that takes an order over the review threshold
    (so an operator has orders to review)."""
    tag = uuid.uuid4().hex[:6].upper()
    items = [(f"FUZZ-{tag}-{n}", f"Fuzzed product {n}", price, 1_000_000) for n, price in enumerate((250, 99_000))]
    await upsert_products(engine, items)
    return [sku for sku, *_ in items]


@pytest.fixture
async def an_order(fuzz_gateway, skus) -> str:
    """One order of the fuzzing customer, so that an operator's run has one to follow too."""
    base_url, settings = fuzz_gateway
    token = mint_token(settings, CUSTOMER, "customer", ttl_s=600)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        response = await http.post(
            "/v1/orders",
            json={"items": [{"sku": skus[0], "quantity": 1}], "shipping_address": ADDRESS, "payment_token": "tok_ok"},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
        )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _nul_was_sent(har: dict) -> bool:
    """Whether some request carried NUL: in a JSON body (escaped), a query string or a path."""
    for entry in har["log"]["entries"]:
        request = entry["request"]
        if "%00" in request["url"] or "\\u0000" in (request.get("postData") or {}).get("text", ""):
            return True
    return False


@pytest.mark.parametrize("role", ["customer", "operator"])
async def test_schemathesis_finds_nothing(role, fuzz_gateway, skus, an_order, tmp_path):
    base_url, settings = fuzz_gateway
    token = mint_token(settings, CUSTOMER if role == "customer" else "schemathesis-operator", role, ttl_s=900)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(skus="[" + ", ".join(f'"{sku}"' for sku in skus) + "]"))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
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
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--generation-allow-x00",
        "true",
        "--max-examples",
        "10",
        "--seed",
        "20251125",
        "--request-timeout",
        "15",
        "--suppress-health-check",
        "all",
        "--no-color",
        "--report",
        "json,har",
        "--report-json-path",
        str(tmp_path / "report.json"),
        "--report-har-path",
        str(tmp_path / "requests.har"),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    except TimeoutError:
        process.kill()
        raise
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-12000:]

    # Nothing left out: every published operation, every phase, and the stateful phase followed links.
    summary = json.loads((tmp_path / "report.json").read_text())
    operations = summary["operations"]
    assert operations["selected"] == operations["tested"] == operations["total"] >= 12, operations
    assert not operations["skipped"] and not summary["filtered"], summary
    assert {name: phase["status"] for name, phase in summary["phases"].items()} == dict.fromkeys(
        ("examples", "coverage", "fuzzing", "stateful"), "success"
    ), summary["phases"]
    links = re.search(r"API Links:\s+(\d+) covered", report)
    assert links is not None and int(links.group(1)) > 0, report[-6000:]
    assert _nul_was_sent(json.loads((tmp_path / "requests.har").read_text())), "no request carried NUL"
