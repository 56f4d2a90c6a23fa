"""The ``manualopt`` command: ``manualopt new`` lists the templates, bakes one, says what is wrong and what to do."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from manualopt import _cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cookiecutter_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep cookiecutter's replay files in the test's folder, not in the home folder."""
    config = tmp_path / "cookiecutter.yaml"
    config.write_text(f"replay_dir: {tmp_path / 'replay'}\ncookiecutters_dir: {tmp_path / 'clones'}\n")
    monkeypatch.setenv("COOKIECUTTER_CONFIG", str(config))


def test_the_templates_come_from_the_source_tree() -> None:
    assert _cli.templates_folder() == ROOT / "templates"
    assert list(_cli.available_templates()) == ["gan", "general"]


def test_list_shows_the_templates_and_their_questions(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["new", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gan: A GAN project")
    assert "\n\ngeneral: A model with one optimizer per named part" in out
    assert "    variant=dcgan|wgan-gp|conditional" in out
    assert "    ema=yes|no" in out
    assert '    optimizers="encoder,decoder"' in out
    assert "    package_name=(made from the answers above)" in out


def test_new_bakes_with_the_given_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = ["project_name=Face GAN", "variant=wgan-gp", "ema=no", "data=image-folder"]
    assert _cli.main(["new", "gan", "--no-input", "-o", str(tmp_path), *answers]) == 0
    project = tmp_path / "face-gan"
    model = (project / "src" / "face_gan" / "model.py").read_text()
    assert "StepSchedule.every(critic=1, generator=n_critic)" in model
    assert "EMA(" not in model
    assert (project / "src" / "face_gan" / "shapes.py").is_file()
    out = capsys.readouterr().out
    assert f"Created {project}\nNext:\n    cd {project}\n    make train CPU=1 " in out
    assert "\n    make test\n" in out


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "manualopt", "new", "general", "--no-input", "-o", str(tmp_path)]
    result = subprocess.run([*command, "optimizers=actor,critic"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (
        '"actor",\n    "critic",' in (tmp_path / "two-part-model" / "src" / "two_part_model" / "model.py").read_text()
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["new"], "Name a template: manualopt new TEMPLATE, with TEMPLATE one of gan, general."),
        (["new", "vae"], "There is no template 'vae'; the templates are gan, general."),
        (["new", "gan", "variant"], "'variant' is not key=value."),
        (["new", "gan", "colour=red"], "The template 'gan' does not ask 'colour'; its questions are project_name,"),
        (["new", "gan", "--no-input", "variant=stylegan"], "stylegan provided for choice variable variant"),
        (["new", "gan", "--no-input", "ema=perhaps"], "perhaps provided for variable ema could not be converted"),
        (["new", "gan", "--no-input", "project_name=3D GAN"], "The project was not created; the reason is printed"),
    ],
)
def test_mistakes_are_reported_in_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert _cli.main([*argv, "-o", str(tmp_path)] if len(argv) > 1 else argv) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.glob("*-*")) == []


def test_a_refused_name_shows_the_hooks_message(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["new", "gan", "--no-input", "-o", str(tmp_path / "out"), "project_name=3D GAN"]) == 1
    err = capfd.readouterr().err
    assert 'package_name "3d_gan" is not a valid name (it starts with a digit)' in err
    assert "manualopt new gan project_slug=project-3d-gan package_name=project_3d_gan" in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_existing_project_folder_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "digit-gan").mkdir()
    (tmp_path / "digit-gan" / "notes.txt").write_text("mine")
    assert _cli.main(["new", "gan", "--no-input", "-o", str(tmp_path)]) == 1
    assert "already exists. Nothing was changed" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "digit-gan").iterdir()] == ["notes.txt"]


def test_without_cookiecutter_it_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = importlib.import_module

    def without_cookiecutter(name: str, package: str | None = None) -> Any:
        if name.startswith("cookiecutter"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", without_cookiecutter)
    assert _cli.main(["new", "gan", "--no-input", "-o", str(tmp_path)]) == 1
    assert "needs cookiecutter, which is not installed. Install it with:\n    pip install 'manualopt[templates]'" in (
        capsys.readouterr().err
    )
    assert _cli.main(["new", "--list"]) == 0  # listing reads the templates' questions without cookiecutter


class FakeDistribution:
    """A manualopt distribution as importlib.metadata sees it: a version, a ``direct_url.json``, an installed file."""

    def __init__(
        self, direct_url: dict[str, Any] | None, serves_this_file: bool = True, version: str = "9.9.9"
    ) -> None:
        self.version = version
        self.direct_url = direct_url
        self.serves_this_file = serves_this_file

    def read_text(self, name: str) -> str | None:
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)

    def locate_file(self, path: str) -> Path:
        return ROOT / path if self.serves_this_file else Path("/nonexistent/site-packages") / path


@pytest.mark.parametrize(
    ("direct_url", "serves_this_file", "expected"),
    [
        (None, True, "manualopt==9.9.9"),  # from a package index: no direct_url.json
        (
            {"url": "file:///dist/manualopt-9.9.9-py3-none-any.whl", "archive_info": {}},
            True,
            "/dist/manualopt-9.9.9-py3-none-any.whl",
        ),
        (
            {"url": "https://example.org/manualopt.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}},
            True,
            "git+https://example.org/manualopt.git@abc123",
        ),
        ({"url": ROOT.as_uri(), "dir_info": {"editable": True}}, False, str(ROOT)),  # an editable clone
        (None, False, str(ROOT)),  # another manualopt installed; this one runs from its source tree
    ],
    ids=["index", "wheel", "git", "editable", "source-tree"],
)
def test_the_requirement_names_the_manualopt_that_runs(
    monkeypatch: pytest.MonkeyPatch, direct_url: dict[str, Any] | None, serves_this_file: bool, expected: str
) -> None:
    fake = FakeDistribution(direct_url, serves_this_file)
    monkeypatch.setattr(_cli.metadata, "distribution", lambda name: fake)
    assert _cli.manualopt_requirement() == expected


def test_the_project_installs_the_manualopt_that_made_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no manualopt on the package index, the baked Makefile still installs one: the one that made it."""
    assert _cli.main(["new", "general", "--no-input", "-o", str(tmp_path)]) == 0
    requirement = _cli.manualopt_requirement()
    assert f"The project installs this manualopt: {requirement}" in capsys.readouterr().out
    project = tmp_path / "two-part-model"
    assert f"MANUALOPT ?= {requirement}\n" in (project / "Makefile").read_text()
    assert f'MANUALOPT="{requirement}"' in (project / ".github" / "workflows" / "ci.yml").read_text()

    assert _cli.main(["new", "general", "--no-input", "-o", str(tmp_path / "b"), "manualopt_requirement=../m"]) == 0
    assert "The project installs" not in capsys.readouterr().out  # an answer given wins
    assert "MANUALOPT ?= ../m\n" in (tmp_path / "b" / "two-part-model" / "Makefile").read_text()

    monkeypatch.setattr(_cli, "manualopt_requirement", lambda: "/a folder/with a space")
    assert _cli.main(["new", "general", "--no-input", "-o", str(tmp_path / "c")]) == 0
    assert "make train MANUALOPT=..." in capsys.readouterr().out
    assert "MANUALOPT ?= manualopt\n" in (tmp_path / "c" / "two-part-model" / "Makefile").read_text()


STANDALONE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("standalone_cli", {path!r})
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)
for argv in (["--version"], ["--help"], ["new", "--help"], ["new", "--list"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
print("HEAVY", sorted(name for name in ("lightning", "torch") if name in sys.modules))
"""


def test_the_command_module_imports_neither_lightning_nor_torch() -> None:
    """``manualopt/_cli.py`` answers ``--version``, ``--help`` and ``new --list`` with the standard library alone."""
    code = STANDALONE.format(path=str(ROOT / "manualopt" / "_cli.py"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "usage: manualopt" in result.stdout
    assert "gan: A GAN project" in result.stdout


def test_version_and_help_do_not_import_lightning() -> None:
    """``manualopt --version`` and ``--help`` (the console script's module) leave Lightning unimported."""
    code = (
        "import sys\nfrom manualopt._cli import main\n"
        "for argv in (['--version'], ['--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('lightning imported:', 'lightning' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lightning imported: False" in result.stdout
