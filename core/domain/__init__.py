"""The pure domain: standard library and pydantic only. Imported by workflows, activities and the API."""

from core.domain.models import *  # noqa: F403
from core.domain.names import *  # noqa: F403
from core.domain.errors import *  # noqa: F403
