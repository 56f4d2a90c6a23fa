"""The ``manualopt`` command: ``manualopt new TEMPLATE`` starts a project from one of the project templates.

The templates are cookiecutter templates, kept in ``templates/`` of the source tree and shipped inside the package.
``manualopt new`` asks the template's questions (or takes the defaults with ``--no-input``), checks the names, and
writes the project::

    manualopt new --list
    manualopt new gan
    manualopt new general --no-input -o projects project_name="Two Towers" optimizers=query,document
    python -m manualopt new gan

It needs cookiecutter: ``pip install 'manualopt[templates]'``. The project installs the manualopt that made it (see
:func:`manualopt_requirement`), unless ``manualopt_requirement=...`` says otherwise.

This module imports neither Lightning nor torch (only the standard library, and cookiecutter when a project is made),
so that ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

__all__ = ["available_templates", "main", "manualopt_requirement", "new_project", "templates_folder"]

INSTALL_HINT = "pip install 'manualopt[templates]'"


class CommandError(Exception):
    """A problem the command reports in one message, without a traceback."""


def templates_folder() -> Path:
    """The folder of the templates: ``manualopt/templates`` when installed, ``templates/`` in a source checkout.

    Raises:
        CommandError: Neither folder holds a template (a broken installation).
    """
    package = Path(__file__).resolve().parent
    for folder in (package / "templates", package.parent / "templates"):
        if any(folder.glob("*/cookiecutter.json")):
            return folder
    raise CommandError(
        f"No project templates found next to {package}. Reinstall manualopt ({INSTALL_HINT}), or run"
        " `cookiecutter templates/<name>` from a clone of its repository."
    )


def available_templates() -> dict[str, Path]:
    """The templates by name (the name of their folder), sorted."""
    folder = templates_folder()
    return {path.parent.name: path.parent for path in sorted(folder.glob("*/cookiecutter.json"))}


def read_options(template: Path) -> dict[str, Any]:
    """The questions of ``template`` (its ``cookiecutter.json``), with their defaults or choices."""
    options: dict[str, Any] = json.loads((template / "cookiecutter.json").read_text(encoding="utf-8"))
    return options


def describe(name: str, template: Path) -> str:
    """A few lines on a template: what it makes, and its options with their defaults (``a|b``: a choice)."""
    options = read_options(template)
    lines = [f"{name}: {options.get('_description', '')}".rstrip()]
    for key, value in options.items():
        if key.startswith("_"):
            continue
        if isinstance(value, list):
            shown = "|".join(str(choice) for choice in value)
        elif isinstance(value, bool):
            shown = "yes|no" if value else "no|yes"
        elif "{{" in str(value):
            shown = "(made from the answers above)"
        else:
            shown = json.dumps(value, ensure_ascii=False)
        lines.append(f"    {key}={shown}")
    return "\n".join(lines)


def parse_assignments(pairs: Sequence[str], options: Mapping[str, Any], template: str) -> dict[str, str]:
    """``key=value`` arguments as answers; a pair without ``=`` or a key the template does not ask is refused.

    Raises:
        CommandError: A malformed pair or an unknown key.
    """
    answers: dict[str, str] = {}
    known = [key for key in options if not key.startswith("_")]
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise CommandError(f"{pair!r} is not key=value. Give answers as key=value, e.g. project_name='My GAN'.")
        if key not in known:
            raise CommandError(
                f"The template {template!r} does not ask {key!r}; its questions are {', '.join(known)}."
                f" See them with `manualopt new --list`."
            )
        answers[key] = value
    return answers


def load_cookiecutter() -> tuple[Callable[..., str], Any]:
    """Cookiecutter's ``cookiecutter`` function and its ``exceptions`` module.

    Raises:
        CommandError: Cookiecutter is not installed; the message says how to install it.
    """
    try:
        main_module = importlib.import_module("cookiecutter.main")
        exceptions = importlib.import_module("cookiecutter.exceptions")
    except ImportError as error:
        raise CommandError(
            f"`manualopt new` needs cookiecutter, which is not installed. Install it with:\n    {INSTALL_HINT}"
        ) from error
    return main_module.cookiecutter, exceptions


def new_project(
    template: str,
    output_dir: Path | str = ".",
    *,
    no_input: bool = False,
    answers: Mapping[str, str] | None = None,
    cookiecutter_options: Mapping[str, Any] | None = None,
) -> Path:
    """Make a project from ``template`` in ``output_dir`` and return its folder.

    Args:
        template: A template name, e.g. ``"gan"`` (see :func:`available_templates`).
        output_dir: The folder in which the project's folder is made.
        no_input: Take the defaults instead of asking (``answers`` still apply).
        answers: Answers by question, e.g. ``{"project_name": "Face GAN", "variant": "wgan-gp"}``.
        cookiecutter_options: More keyword arguments for ``cookiecutter.main.cookiecutter``.

    Raises:
        CommandError: An unknown template or question, an answer the template refuses (its message is printed
            first), a project folder that exists already, or cookiecutter is missing.
    """
    templates = available_templates()
    if template not in templates:
        raise CommandError(f"There is no template {template!r}; the templates are {', '.join(templates)}.")
    cookiecutter, exceptions = load_cookiecutter()
    path = templates[template]
    answers = dict(answers or {})
    parse_assignments([f"{key}={value}" for key, value in answers.items()], read_options(path), template)
    # cookiecutter logs a refused answer's traceback; the hook has printed the reason, and the command says the rest
    quiet = logging.NullHandler()
    cookiecutter_logger = logging.getLogger("cookiecutter")
    propagate = cookiecutter_logger.propagate
    cookiecutter_logger.addHandler(quiet)
    cookiecutter_logger.propagate = False
    try:
        return Path(
            cookiecutter(
                str(path),
                no_input=no_input,
                output_dir=str(output_dir),
                extra_context=answers,
                **dict(cookiecutter_options or {}),
            )
        )
    except exceptions.FailedHookException as error:
        raise CommandError("The project was not created; the reason is printed above. Nothing was written.") from error
    except exceptions.OutputDirExistsException as error:
        raise CommandError(
            f"{error}. Nothing was changed: choose another project name or another folder with -o DIR."
        ) from error
    except ValueError as error:  # cookiecutter: an answer that is not one of the choices
        raise CommandError(f"{error} Nothing was written.") from error
    finally:
        cookiecutter_logger.removeHandler(quiet)
        cookiecutter_logger.propagate = propagate


def installed_from(distribution: metadata.Distribution | None = None) -> str | None:
    """Where pip installed manualopt from, when not from a package index (a path or a URL), else None.

    Read from the distribution's ``direct_url.json`` (PEP 610): a local folder, wheel or archive as its path, a version
    control URL with the installed commit (``git+https://...@<commit>``), any other URL as it is.
    """
    try:
        direct = (distribution or metadata.distribution("manualopt")).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not direct:
        return None
    source: dict[str, Any] = json.loads(direct)
    url = str(source.get("url", ""))
    vcs = source.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs"):
        commit = vcs.get("commit_id")
        return f"{vcs['vcs']}+{url}" + (f"@{commit}" if commit else "")
    if url.startswith("file:"):
        return url2pathname(urlparse(url).path)
    return url or None


# what the templates' hook accepts as manualopt_requirement: one requirement, path or URL, nothing the shell reads
_REQUIREMENT = re.compile(r"[A-Za-z0-9./~][A-Za-z0-9_.:/@+=~,<>!\[\]-]*")


def manualopt_requirement() -> str:
    """The pip requirement of the manualopt that runs this command: what a project made by it installs.

    ``manualopt==<version>`` when it came from a package index; the path of the wheel, archive or folder (a clone,
    editable or not) it was installed from; a version control URL at the installed commit. Run from a source tree
    that is not installed as this distribution (``PYTHONPATH``), the tree's folder.
    """
    here = Path(__file__).resolve()
    tree = here.parents[1]
    try:
        distribution: metadata.Distribution | None = metadata.distribution("manualopt")
    except metadata.PackageNotFoundError:
        distribution = None
    if distribution is not None:
        source = installed_from(distribution)
        installed_file = Path(str(distribution.locate_file("manualopt/_cli.py")))
        runs_here = installed_file.is_file() and installed_file.resolve() == here  # a copy in site-packages
        from_this_tree = source is not None and Path(source).is_dir() and Path(source).resolve() == tree  # editable
        if runs_here or from_this_tree:
            return source or f"manualopt=={distribution.version}"
    if (tree / "pyproject.toml").is_file():
        return str(tree)
    return "manualopt"


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``manualopt`` parser and the parser of its ``new`` command."""
    parser = argparse.ArgumentParser(
        prog="manualopt", description="manualopt: manual optimization for PyTorch Lightning."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    new_help = "start a project from a template"
    commands.add_parser("new", help=new_help, add_help=False)
    new = argparse.ArgumentParser(
        prog="manualopt new",
        description="Start a project from a template: asks its questions, checks the names, writes the project.",
        epilog="Example: manualopt new gan --no-input -o projects project_name='Face GAN' variant=wgan-gp",
    )
    new.add_argument("template", nargs="?", help="the template: gan or general (see --list)")
    new.add_argument("answers", nargs="*", metavar="key=value", help="answers given in advance, e.g. variant=wgan-gp")
    new.add_argument("--list", action="store_true", help="list the templates and their questions, then exit")
    new.add_argument("--no-input", action="store_true", help="do not ask: take the defaults and the given answers")
    new.add_argument("-o", "--output-dir", default=".", help="the folder to make the project in (default: .)")
    return parser, new


def _version() -> str:
    """The version of manualopt, without importing the package (and with it Lightning) when it is not imported yet."""
    version = getattr(sys.modules.get("manualopt"), "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return metadata.version("manualopt")
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``manualopt`` command with ``argv`` (default: ``sys.argv[1:]``); return its exit status.

    Example:
        >>> main(["new", "--list"])  # doctest: +ELLIPSIS
        gan: A GAN project: ...
        <BLANKLINE>
        general: ...
        0
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser, new = _parsers()
    if not arguments or arguments[0] != "new":
        parser.parse_args(arguments)  # --help, --version, or an unknown command: argparse answers and exits
        parser.print_help()
        return 2
    # options and key=value answers in any order, e.g. `new gan --no-input -o out variant=wgan-gp`
    options = new.parse_intermixed_args(arguments[1:])
    try:
        if options.list:
            print("\n\n".join(describe(name, path) for name, path in available_templates().items()))
            return 0
        if options.template is None:
            raise CommandError(
                f"Name a template: manualopt new TEMPLATE, with TEMPLATE one of {', '.join(available_templates())}."
            )
        templates = available_templates()
        if options.template not in templates:
            raise CommandError(f"There is no template {options.template!r}; the templates are {', '.join(templates)}.")
        answers = parse_assignments(options.answers, read_options(templates[options.template]), options.template)
        requirement = None
        if "manualopt_requirement" not in answers and _REQUIREMENT.fullmatch(manualopt_requirement()):
            # the project installs the manualopt that made it, which may be on no package index
            requirement = answers["manualopt_requirement"] = manualopt_requirement()
        project = new_project(options.template, options.output_dir, no_input=options.no_input, answers=answers)
    except CommandError as error:
        print(f"manualopt new: {error}", file=sys.stderr)
        return 1
    print(
        f"Created {project}\nNext:\n    cd {project}\n    make train CPU=1    # CPU=1: PyTorch's CPU build; leave"
        " it out to train on a GPU\n    make test"
    )
    if requirement is not None:
        print(f"The project installs this manualopt: {requirement} (MANUALOPT in its Makefile).")
    elif "manualopt_requirement" not in answers:
        print(
            f"This manualopt runs from {manualopt_requirement()!r}, which the project's Makefile cannot name; give"
            " make train MANUALOPT=... the requirement, path or URL to install it from."
        )
    return 0
