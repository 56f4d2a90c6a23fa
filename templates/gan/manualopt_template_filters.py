"""Jinja filters of the manualopt templates: text from the answers goes into generated files as data, never as code.

Cookiecutter loads this module through ``_extensions`` in ``cookiecutter.json``. Every template has an identical copy.
"""

from __future__ import annotations

from jinja2 import Environment
from jinja2.ext import Extension

# TOML basic strings: these must be escaped; every other character stands for itself (the file is UTF-8).
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: object) -> str:
    r"""``value`` as a quoted TOML basic string, e.g. ``Bob's "GAN"`` -> ``"Bob's \"GAN\""``.

    Quotes, backslashes and control characters are escaped, so the text cannot end the string or add keys.
    """
    characters = []
    for character in str(value):
        code = ord(character)
        if character in _TOML_ESCAPES:
            characters.append(_TOML_ESCAPES[character])
        elif code < 0x20 or code == 0x7F:
            characters.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate has no TOML spelling
            characters.append("\\uFFFD")
        else:
            characters.append(character)
    return '"' + "".join(characters) + '"'


class QuotingExtension(Extension):
    """Adds the ``toml_string`` filter to the template's Jinja environment."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.filters["toml_string"] = toml_string
