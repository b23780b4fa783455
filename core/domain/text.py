"""Text that comes from outside (request bodies, query parameters, token claims) and may reach PostgreSQL.

PostgreSQL's ``text`` and ``jsonb`` cannot hold NUL (U+0000): a value with one fails in the database
as a data error that no retry fixes. It is refused where it enters instead, as a validation error
naming the field. Single-line values (names, address lines, identifiers) refuse every control
character, since none belongs in them (nor on a shipping label); free-form notes keep tab and line
breaks. Unpaired surrogates, which UTF-8 cannot encode at all, are refused too (pydantic's ``str``
already refuses them in bodies; a token's claims are plain JSON).

Only the public API's request models use :class:`Text`: payloads already recorded in workflow
histories and in the read model are read back exactly as they were accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

CONTROL_CHARACTERS = "must not contain NUL (\\u0000) or control characters"

# As regular-expression classes (written with escapes, so the same text serves Python and the
# ECMA-262 `pattern` of the JSON schema): C0 controls, DEL and C1 controls.
_SINGLE_LINE = r"\x00-\x1f\x7f-\x9f"
_MULTILINE = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # the same, less tab, LF and CR
_SURROGATES = r"\ud800-\udfff"  # Python only: an ECMA-262 or Rust pattern cannot name them
_FORBIDDEN = {
    False: re.compile(f"[{_SINGLE_LINE}{_SURROGATES}]"),
    True: re.compile(f"[{_MULTILINE}{_SURROGATES}]"),
}


def has_control_characters(value: str, *, multiline: bool = False) -> bool:
    """Whether ``value`` holds NUL, another control character (tab, LF and CR are allowed when
    ``multiline``) or an unpaired surrogate."""
    return _FORBIDDEN[multiline].search(value) is not None


@dataclass(frozen=True)
class Text:
    """A string field without NUL or control characters: ``Annotated[str, Text(max_length=200)]``.

    The lengths are checked first (pydantic's own messages), then the characters. ``multiline``
    allows tab, LF and CR. The JSON schema documents the rule as a ``pattern``, so a generated
    client (or a fuzzer) knows which strings are valid.
    """

    min_length: int | None = None
    max_length: int | None = None
    multiline: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        multiline = self.multiline

        def check(value: str) -> str:
            if has_control_characters(value, multiline=multiline):
                raise PydanticCustomError("control_characters", CONTROL_CHARACTERS)
            return value

        return core_schema.no_info_after_validator_function(
            check, core_schema.str_schema(min_length=self.min_length, max_length=self.max_length)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = f"^[^{_MULTILINE if self.multiline else _SINGLE_LINE}]*$"
        return json_schema
