"""``python -m sandbox``: serve the sandbox providers with the settings from the environment."""

from __future__ import annotations

import logging

from core.config import get_settings
from sandbox.server import run

if __name__ == "__main__":
    settings = get_settings()
    logging.basicConfig(level=settings.log_level)
    run(settings)
