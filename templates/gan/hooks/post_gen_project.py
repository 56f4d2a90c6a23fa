"""Remove the files that the answers leave out.

The demo pictures' module goes without an image folder, the license text without a license. Cookiecutter renders
this script with the answers and runs it in the new project folder.
"""

from __future__ import annotations

import json
from pathlib import Path

ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | jsonify }}""")


def unused_files(answers: dict[str, object]) -> list[Path]:
    """The project's files that the answers do not use."""
    unused = []
    if answers.get("data") != "image-folder":
        unused.append(Path("src", str(answers["package_name"]), "shapes.py"))
    if answers.get("license") == "none":
        unused.append(Path("LICENSE"))
    return unused


if __name__ == "__main__":
    for path in unused_files(ANSWERS):
        path.unlink()
