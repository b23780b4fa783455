"""The OpenAPI document is complete: every response of every operation has a schema and an example."""

from __future__ import annotations


async def test_every_response_has_a_schema_and_an_example(gateway_client):
    async with gateway_client() as http:
        document = (await http.get("/openapi.json")).json()
        allow = (await http.request("OPTIONS", "/v1/orders")).headers["allow"]
    assert allow == "GET, POST"
    missing = []
    assert {"/v1/orders", "/codec/encode", "/codec/decode", "/healthz", "/readyz"} <= set(document["paths"])
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                content = response.get("content") or {}
                if status == "304":  # Not Modified has no body by definition (RFC 9110); its ETag says which
                    assert not content and "ETag" in response["headers"], (method, path)
                    continue
                if not content or any("schema" not in media or "example" not in media for media in content.values()):
                    missing.append(f"{method.upper()} {path} {status}")
                if (
                    status.startswith(("4", "5"))
                    and path.startswith(("/v1/", "/codec/"))
                    and "application/problem+json" not in content
                ):
                    missing.append(f"{method.upper()} {path} {status} is not problem+json")
            if path.startswith("/v1/"):
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
            if path.startswith("/codec/"):  # operators only, and the body must be a codec body
                assert {"200", "400", "401", "403", "413", "503"} <= set(operation["responses"]), (method, path)
                assert operation["requestBody"]["content"]["application/json"]["schema"], (method, path)
    assert not missing, missing


async def test_free_text_fields_document_the_characters_they_refuse(gateway_client):
    """A client (or a fuzzer) reads from the schema which strings are valid: no control characters."""
    async with gateway_client() as http:
        document = (await http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    name = schemas["ShippingAddress"]["properties"]["name"]
    assert name["pattern"] == "^[^\\x00-\\x1f\\x7f-\\x9f]*$" and name["maxLength"] == 200
    reason = schemas["CancelBody"]["properties"]["reason"]["anyOf"][0]
    assert reason["pattern"] == "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]*$"
    assert schemas["OrderCreate"]["properties"]["shipping_address"] == {"$ref": "#/components/schemas/ShippingAddress"}


async def test_answers_naming_an_order_link_to_the_operations_on_it(gateway_client):
    """Links let clients and stateful testers chain submit -> read -> cancel / address / review."""
    async with gateway_client() as http:
        document = (await http.get("/openapi.json")).json()
    paths = document["paths"]
    on_an_order = {
        f"#/paths/{path.replace('/', '~1')}/{method}"
        for path, operations in paths.items()
        if path.startswith("/v1/orders/{order_id}")
        for method in operations
    }
    assert len(on_an_order) == 5
    for path, method, status, expression in [
        ("/v1/orders", "post", "202", "$response.body#/id"),
        ("/v1/orders", "get", "200", "$response.body#/items/0/id"),
        ("/v1/orders/{order_id}/cancel", "post", "200", "$response.body#/id"),
    ]:
        links = paths[path][method]["responses"][status]["links"].values()
        assert {link["operationRef"] for link in links} == on_an_order, (path, method)
        assert all(link["parameters"] == {"order_id": expression} for link in links), (path, method)
    [key] = [p for p in paths["/v1/orders"]["post"]["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header" and key["required"] is True and key["schema"]["pattern"]
