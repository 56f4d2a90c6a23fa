"""Refuse answers that would not make a working project, before any file of the project is written.

Cookiecutter renders this script with the answers and runs it in the new, still empty, project folder; when it exits
with an error, cookiecutter removes that folder. Names are data: a name that is not a plain identifier is refused here,
and free text (the project name, description, author) is quoted where it is written. Every manualopt template has an
identical copy of this file.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
import unicodedata

# The answers, as JSON text inside a raw string: JSON escapes every quote and backslash, so no answer can end it.
ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | jsonify }}""")
# Cookiecutter renders this file as a template: the rest of it is kept as it is. {% raw %}

SLUG = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
# a pip requirement, path or URL that is safe unquoted in a Makefile and a YAML file: no spaces, quotes, $, ;, |, &, #
REQUIREMENT = re.compile(r"[A-Za-z0-9./~][A-Za-z0-9_.:/@+=~,<>!\[\]-]*")
EMAIL = re.compile(r"[^@\s<>\",;()\[\]]+@[^@\s<>\",;()\[\]]+\.[^@\s<>\",;()\[\]]+")
TEMPLATE_SYNTAX = ("{{", "}}", "{%", "%}", "{#", "#}")
# Module names a project package must not take: it would hide them from every import in the project.
TAKEN = {
    "manualopt",
    "lightning",
    "pytorch_lightning",
    "lightning_utilities",
    "torch",
    "torchmetrics",
    "jsonargparse",
    "numpy",
    "sklearn",
    "yaml",
    "tensorboard",
    "pytest",
    "setuptools",
    "tests",
    "src",
    "configs",
} | set(sys.stdlib_module_names)
# Lightning reads a mapping with one of these keys as its own configuration dictionary, not as optimizer names.
RESERVED_OPTIMIZER_NAMES = {"optimizer", "lr_scheduler", "monitor"}
MAX_OPTIMIZERS = 8
MAX_NAME = 40
MAX_OPTIMIZER_NAME = 32


def show(value: str) -> str:
    """``value`` quoted for a message; escaped when it holds characters that do not print."""
    return f'"{value}"' if value.isprintable() else ascii(value)


def suggest_slug(project_name: str) -> str:
    """A valid project slug close to ``project_name``: accents dropped, words joined by dashes."""
    ascii_name = unicodedata.normalize("NFKD", project_name).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_name.replace("'", "").lower())
    slug = "-".join(words) or "my-project"
    return slug if slug[0].isalpha() else f"project-{slug}"


def suggest_package(slug: str) -> str:
    """A valid package name for ``slug``."""
    name = slug.replace("-", "_")
    return f"{name}_project" if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in TAKEN else name


def text_problems(key: str, value: str) -> list[str]:
    """Problems of a free-text answer: characters that do not print, template syntax."""
    problems = []
    if not value.isprintable():
        hidden = sorted({f"U+{ord(c):04X}" for c in value if not c.isprintable()})
        problems.append(
            f"{key} {show(value)} holds characters that do not print ({', '.join(hidden)}: line breaks, tabs,"
            " control or invisible characters). Write it on one line, with plain spaces."
        )
    if any(marker in value for marker in TEMPLATE_SYNTAX):
        problems.append(f"{key} {show(value)} holds template syntax ({{{{, {{%, {{#). Remove the braces.")
    return problems


def identifier_problems(kind: str, value: str) -> list[str]:
    """Problems of a Python identifier answer (package or optimizer name)."""
    if not IDENTIFIER.fullmatch(value):
        reasons = []
        if not value:
            reasons.append("it is empty")
        if value[:1].isdigit():
            reasons.append("it starts with a digit")
        if any(c.isspace() for c in value):
            reasons.append("it holds spaces")
        if "-" in value:
            reasons.append("it holds dashes")
        if any(not c.isascii() for c in value):
            reasons.append("it holds non-ASCII characters")
        if any(c.isascii() and not (c.isalnum() or c in " _-") for c in value):
            reasons.append("it holds punctuation")
        if any(c.isupper() for c in value):
            reasons.append("it holds capitals")
        if value.startswith("_"):
            reasons.append("it starts with an underscore")
        because = "; ".join(reasons) or "it is not a plain identifier"
        return [
            f"{kind} {show(value)} is not a valid name ({because}): use lowercase ASCII letters, digits and"
            " underscores, starting with a letter."
        ]
    if keyword.iskeyword(value) or keyword.issoftkeyword(value):
        return [f"{kind} {show(value)} is a Python keyword; it cannot name a package or a variable."]
    return []


def problems_of(answers: dict[str, object]) -> list[str]:
    """Every problem of the answers, each with what to do instead."""
    problems: list[str] = []
    texts = {key: str(answers.get(key, "")) for key in ("project_name", "description", "author_name", "author_email")}
    if not texts["project_name"].strip():
        problems.append('project_name is empty. Give the project a name, e.g. project_name="Digit GAN".')
    for key, value in texts.items():
        problems += text_problems(key, value)
    email = texts["author_email"]
    if email and not EMAIL.fullmatch(email):
        problems.append(f"author_email {show(email)} is not an e-mail address like name@example.com.")

    slug = str(answers.get("project_slug", ""))
    if not SLUG.fullmatch(slug) or len(slug) > MAX_NAME:
        problems.append(
            f"project_slug {show(slug)} (the project's folder and distribution name, derived from project_name) must"
            " be lowercase ASCII letters and digits in words joined by single dashes, starting with a letter, at"
            f" most {MAX_NAME} characters."
        )

    package = str(answers.get("package_name", ""))
    package_problems = identifier_problems("package_name", package)
    if len(package) > MAX_NAME:
        package_problems.append(f"package_name {show(package)} is longer than {MAX_NAME} characters.")
    if not package_problems and package in TAKEN:
        package_problems.append(
            f"package_name {show(package)} is the name of a module the project imports or of Python's standard"
            " library; the project's package would hide it."
        )
    problems += package_problems

    requirement = str(answers.get("manualopt_requirement", "manualopt"))
    if not REQUIREMENT.fullmatch(requirement):
        problems.append(
            f"manualopt_requirement {show(requirement)} must be one pip requirement, path or URL without spaces,"
            " quotes or shell characters ($ ; | & # ` \\), e.g. manualopt, manualopt>=0.1, ../manualopt or"
            " git+https://example.org/manualopt.git."
        )

    if "optimizers" in answers:
        raw = str(answers["optimizers"])
        names = [name.strip() for name in raw.split(",")]
        if not raw.strip():
            problems.append('optimizers is empty. Name one optimizer at least, e.g. optimizers="encoder,decoder".')
        else:
            for name in names:
                problems += identifier_problems("optimizer name", name)
                if len(name) > MAX_OPTIMIZER_NAME:
                    problems.append(f"optimizer name {show(name)} is longer than {MAX_OPTIMIZER_NAME} characters.")
                if name in RESERVED_OPTIMIZER_NAMES:
                    problems.append(
                        f"optimizer name {show(name)} is reserved: Lightning reads a mapping with that key as its own"
                        " configuration. Choose another name."
                    )
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                problems.append(f"optimizers {show(raw)} names {', '.join(duplicates)} twice. Name each once.")
            if len(names) > MAX_OPTIMIZERS:
                problems.append(f"optimizers {show(raw)} names {len(names)} optimizers; at most {MAX_OPTIMIZERS}.")
    return problems


def main() -> int:
    """Print every problem with the answers and a fix to standard error; 1 if there is one, else 0."""
    problems = problems_of(ANSWERS)
    if not problems:
        return 0
    lines = ["The project was not created: some answers cannot be used.", *(f"  - {p}" for p in problems)]
    if any(p.startswith(("project_slug", "package_name")) for p in problems):
        given = str(ANSWERS.get("project_slug", ""))
        slug = given if SLUG.fullmatch(given) else suggest_slug(str(ANSWERS.get("project_name", "")))
        names = f"project_slug={slug} package_name={suggest_package(slug)}"
        template = str(ANSWERS.get("_manualopt_template", "<template>"))
        lines += [
            "Fix: choose a project name of ASCII letters, digits and spaces, or give the names yourself, e.g.",
            f"    manualopt new {template} {names}",
            f"    cookiecutter <path or URL of the template> {names}",
        ]
    lines.append("Nothing was written.")
    print("\n".join(lines), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
# {% endraw %}
