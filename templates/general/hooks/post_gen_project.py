"""Remove the files that the answers leave out: the license text without a license.

Cookiecutter renders this script with the answers and runs it in the new project folder.
"""

from __future__ import annotations

import json
from pathlib import Path

ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | jsonify }}""")


def unused_files(answers: dict[str, object]) -> list[Path]:
    """The project's files that the answers do not use."""
    return [Path("LICENSE")] if answers.get("license") == "none" else []


if __name__ == "__main__":
    for path in unused_files(ANSWERS):
        path.unlink()
