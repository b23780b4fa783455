"""Workers write the bytecode of their workflow modules and of the modules beside them."""

from __future__ import annotations

import importlib.util
import sys

from workers.main import cache_workflow_bytecode


def test_the_workflow_module_and_its_package_siblings_get_bytecode(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as under PYTHONDONTWRITEBYTECODE=1
    package = tmp_path / "flows"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "policies.py").write_text("RETRIES = 3\n")
    (package / "shape.py").write_text("from flows import policies\n\nclass Shape:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from flows.shape import Shape  # type: ignore[import-not-found]

    assert not (package / "__pycache__").exists()
    cache_workflow_bytecode([Shape])
    for name in ("__init__", "policies", "shape"):
        assert (package / importlib.util.cache_from_source(str(package / f"{name}.py"))).exists(), name
    for name in list(sys.modules):
        if name == "flows" or name.startswith("flows."):
            monkeypatch.delitem(sys.modules, name)
