"""The OpenAPI document is complete: every response of every operation has a schema and an example."""

from __future__ import annotations


async def test_every_response_has_a_schema_and_an_example(gateway_client):
    async with gateway_client() as http:
        document = (await http.get("/openapi.json")).json()
        allow = (await http.request("OPTIONS", "/v1/orders")).headers["allow"]
    assert allow == "GET, POST"
    missing = []
    for path, operations in document["paths"].items():
        if not path.startswith(("/v1/", "/healthz", "/readyz")):
            continue  # routers of other concerns document themselves
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                content = response.get("content") or {}
                if not content or any("schema" not in media or "example" not in media for media in content.values()):
                    missing.append(f"{method.upper()} {path} {status}")
                if (
                    status.startswith(("4", "5"))
                    and path.startswith("/v1/")
                    and "application/problem+json" not in content
                ):
                    missing.append(f"{method.upper()} {path} {status} is not problem+json")
            if path.startswith("/v1/"):
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
    assert not missing, missing
