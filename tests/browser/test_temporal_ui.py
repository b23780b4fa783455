"""The Temporal Web UI as an operator sees it, in headless Chromium: find an order by CustomerId,
open it, and read the shipping address in plain text — decrypted in the browser through the
gateway's /codec endpoint while the server holds only ciphertext. Saves a screenshot to artifacts/.

Needs Debian's chromium and playwright-core (scripts/install-browser.sh installs both; the test
skips with the reason where that is impossible, e.g. no root for apt-get)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import uvicorn

from activities.http import provider_client
from api.app import create_app
from core.search_attributes import SEARCH_ATTRIBUTES
from core.temporal import connect_client
from core.tokens import mint_token
from devstack.processes import free_port
from devstack.temporal import TemporalDevServer
from tests.harness import ROOT, random_ref, wait_for
from tests.support import new_sku
from workers.main import build_workers

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def browser_ready():
    result = subprocess.run(
        ["sh", str(ROOT / "scripts" / "install-browser.sh")], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        pytest.skip(
            f"Chromium is not available here: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'install failed'}"
        )
    if not shutil.which("node"):
        pytest.skip("node is not installed (needed to drive Chromium with playwright-core)")


async def test_operator_finds_the_order_and_reads_the_decoded_address(
    browser_ready, settings, engine, sandbox, artifacts_dir, tmp_path
):
    api_port, ui_port = free_port(), free_port()
    server = TemporalDevServer(
        None,
        port=free_port(),
        ui_port=ui_port,
        search_attributes=SEARCH_ATTRIBUTES,
        ui_codec_endpoint=f"http://127.0.0.1:{api_port}/codec",
        log_dir=tmp_path,
    )
    ui = server.ui_url
    ui_settings = settings.model_copy(
        update={
            "temporal_address": server.address,
            "api_port": api_port,
            "task_queue": f"ui-{uuid.uuid4().hex[:8]}",
            "codec_cors_origins": [ui],
        }
    )
    async with AsyncExitStack() as stack:
        await server.start_async()
        stack.push_async_callback(asyncio.to_thread, server.stop)
        client = await connect_client(ui_settings)
        http = await stack.enter_async_context(provider_client(ui_settings))
        for worker in build_workers(client, ui_settings, engine, http):
            await stack.enter_async_context(worker)
        gateway = uvicorn.Server(
            uvicorn.Config(
                create_app(ui_settings, engine=engine, client=client), host="127.0.0.1", port=api_port, log_config=None
            )
        )
        serving = asyncio.create_task(gateway.serve())
        stack.push_async_callback(lambda: serving)
        stack.callback(setattr, gateway, "should_exit", True)
        await wait_for(lambda: asyncio.sleep(0, gateway.started), what="gateway")

        customer = random_ref("ada")
        sku = await new_sku(engine)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as api:
            response = await api.post(
                "/v1/orders",
                json={
                    "items": [{"sku": sku, "quantity": 1}],
                    "payment_token": "tok_ok",
                    "shipping_address": {
                        "name": "Ada Lovelace",
                        "line1": "Unter den Linden 1",
                        "line2": None,
                        "city": "Berlin",
                        "postal_code": "10117",
                        "country": "DE",
                    },
                },
                headers={
                    "Authorization": f"Bearer {mint_token(ui_settings, customer, 'customer')}",
                    "Idempotency-Key": uuid.uuid4().hex,
                },
            )
        assert response.status_code == 202, response.text
        workflow_id = f"order-{response.json()['id']}"

        screenshot = artifacts_dir / "temporal-ui-order.png"
        run = await asyncio.to_thread(
            subprocess.run,
            ["node", str(HERE / "ui_check.mjs"), ui, customer, workflow_id, "Unter den Linden", str(screenshot)],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=120,
        )
        outcome = (
            json.loads(run.stdout.strip().splitlines()[-1])
            if run.stdout.strip()
            else {"ok": False, "error": run.stderr}
        )
        assert outcome["ok"], f"{outcome} (screenshot: {screenshot})"
        assert any(call.startswith("200 ") and "/codec/decode" in call for call in outcome["codecCalls"]), outcome
        assert screenshot.stat().st_size > 10_000
