"""The project templates of templates/: bake every combination of answers and check what comes out.

Each bake must succeed, leave no template syntax, pass ruff with the baked project's own config, and give a package
that imports. The baked projects' own test suites run (in this environment, from their source folders) for a covering
set of answers, each value of each question at least once, then for the rest of the cross product. Bad names
are refused by the pre-generation hook with nothing written, names are written as data, and the train command of a
default GAN project runs to the end.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

import cookiecutter.main as cookiecutter_main
import pytest
import yaml
from cookiecutter.exceptions import FailedHookException
from processes import run_in_own_group

from manualopt import ManualOptimizationModule

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"
TEMPLATE_SYNTAX = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")
# names that the "general" template's bakes use: two (the default), one, three with spaces around the commas
OPTIMIZER_NAME_SETS = ["encoder,decoder", "model", "generator, critic ,extra_part"]
# Baked suites run on one thread: their networks are tiny, and several threads only wait for each other on 2 cores.
SUITE_ENV = {"OMP_NUM_THREADS": "1"}


def questions(template: str) -> dict[str, Any]:
    """The template's ``cookiecutter.json``."""
    options: dict[str, Any] = json.loads((TEMPLATES / template / "cookiecutter.json").read_text())
    return options


def choices(template: str) -> dict[str, list[Any]]:
    """Every question with a fixed set of answers, and those answers: choice lists, yes/no, optimizer names."""
    found: dict[str, list[Any]] = {}
    for key, value in questions(template).items():
        if key.startswith("_"):
            continue
        if isinstance(value, list):
            found[key] = list(value)
        elif isinstance(value, bool):
            found[key] = [True, False]
    if "optimizers" in questions(template):
        found["optimizers"] = OPTIMIZER_NAME_SETS
    return found


def combination_id(template: str, answers: dict[str, Any]) -> str:
    return "-".join([template, *(str(value).replace(",", "+").replace(" ", "") for value in answers.values())])


def all_combinations(template: str) -> list[dict[str, Any]]:
    """The cross product of the template's fixed-answer questions."""
    options = choices(template)
    return [dict(zip(options, values, strict=True)) for values in itertools.product(*options.values())]


COMBINATIONS = [(template, answers) for template in ("gan", "general") for answers in all_combinations(template)]
IDS = [combination_id(template, answers) for template, answers in COMBINATIONS]

# A covering set: every value of every question at least once, and each GAN variant with each kind of data.
COVERING = [
    ("gan", {}),  # the defaults: dcgan, EMA, csv, digits, MIT
    (
        "gan",
        {"variant": "wgan-gp", "ema": False, "logger": "tensorboard", "data": "image-folder", "license": "Apache-2.0"},
    ),
    (
        "gan",
        {"variant": "conditional", "ema": False, "logger": "csv", "data": "image-folder", "license": "BSD-3-Clause"},
    ),
    ("gan", {"variant": "conditional", "ema": True, "logger": "tensorboard", "data": "digits", "license": "none"}),
    ("gan", {"variant": "dcgan", "ema": False, "logger": "tensorboard", "data": "image-folder"}),
    ("gan", {"variant": "wgan-gp", "ema": True, "logger": "csv", "data": "digits"}),
    ("general", {}),  # encoder,decoder, csv, MIT
    ("general", {"optimizers": "model", "logger": "tensorboard", "license": "none"}),
    ("general", {"optimizers": "generator, critic ,extra_part", "logger": "csv", "license": "Apache-2.0"}),
    ("general", {"logger": "tensorboard", "license": "BSD-3-Clause"}),
]


def bake(template: str, output: Path, answers: dict[str, Any], replay: Path | None = None) -> Path:
    """Bake ``template`` into ``output`` with ``answers`` (the rest: defaults), through cookiecutter's API."""
    config = {"replay_dir": str(replay or output / ".replay"), "cookiecutters_dir": str(output / ".cookiecutters")}
    made = cookiecutter_main.cookiecutter(
        str(TEMPLATES / template), no_input=True, output_dir=str(output), extra_context=answers, default_config=config
    )
    return Path(made)


def full_answers(template: str, answers: dict[str, Any]) -> dict[str, Any]:
    """``answers`` completed with the first (default) answer of every fixed-answer question."""
    return {key: answers.get(key, values[0]) for key, values in choices(template).items()}


@pytest.fixture(scope="session")
def baked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every combination baked once, each with a project name of its own (so that all packages import side by side)."""
    output = tmp_path_factory.mktemp("baked")
    projects = {}
    for index, ((template, answers), name) in enumerate(zip(COMBINATIONS, IDS, strict=True)):
        projects[name] = bake(template, output, {**answers, "project_name": f"Bake {template} {index}"}, output)
    return projects


def package_folder(project: Path) -> Path:
    (folder,) = (project / "src").iterdir()
    return folder


def text_files(project: Path) -> Iterator[Path]:
    for path in sorted(project.rglob("*")):
        if path.is_file() and ".replay" not in path.parts:
            yield path


@pytest.mark.parametrize(("template", "answers"), COMBINATIONS, ids=IDS)
def test_every_combination_bakes_a_complete_project(
    baked: dict[str, Path], template: str, answers: dict[str, Any]
) -> None:
    project = baked[combination_id(template, answers)]
    files = {path.relative_to(project).as_posix() for path in text_files(project)}
    package = package_folder(project).name
    for path in text_files(project):
        text = path.read_text(encoding="utf-8")
        assert not TEMPLATE_SYNTAX.search(text.replace("${{ matrix.python-version }}", "")), path
    expected = {
        ".github/workflows/ci.yml",
        ".gitignore",
        "Makefile",
        "README.md",
        "configs/train.yaml",
        "configs/multi_gpu.yaml",
        "pyproject.toml",
        f"src/{package}/__init__.py",
        f"src/{package}/__main__.py",
        f"src/{package}/cli.py",
        f"src/{package}/model.py",
        f"src/{package}/data.py",
        f"src/{package}/py.typed",
        "tests/test_training.py",
    }
    assert expected <= files
    assert ("LICENSE" in files) == (answers["license"] != "none")
    assert (f"src/{package}/shapes.py" in files) == (answers.get("data") == "image-folder")
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert metadata["name"] == project.name
    assert metadata.get("license") == (None if answers["license"] == "none" else answers["license"])
    assert "manualopt" in metadata["dependencies"]
    assert ("tensorboard>=2.11" in metadata["dependencies"]) == (answers["logger"] == "tensorboard")
    config = yaml.safe_load((project / "configs" / "train.yaml").read_text())
    assert config["trainer"]["logger"]["class_path"].endswith(
        {"csv": "CSVLogger", "tensorboard": "TensorBoardLogger"}[answers["logger"]]
    )
    if answers.get("data") == "image-folder":  # an epoch of the demo pictures logs at least once: no warning
        demo_pictures = 600  # shapes.write_shapes' default count, what `make train` writes
        assert config["trainer"]["log_every_n_steps"] <= demo_pictures // config["data"]["batch_size"]
    yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    multi_gpu = yaml.safe_load((project / "configs" / "multi_gpu.yaml").read_text())
    assert multi_gpu == {"trainer": {"strategy": "ddp_find_unused_parameters_true", "devices": "auto"}}


def test_every_bake_passes_ruff_with_its_own_config(baked: dict[str, Path]) -> None:
    """One ruff run over all projects: ruff reads each file's closest pyproject.toml, the baked project's own."""
    folders = [str(path) for path in baked.values()]
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run([*ruff, "check", "--no-cache", *folders], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    formatted = subprocess.run([*ruff, "format", "--check", "--no-cache", *folders], capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


@pytest.mark.parametrize(("template", "answers"), COMBINATIONS, ids=IDS)
def test_every_baked_package_imports(
    baked: dict[str, Path], template: str, answers: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = baked[combination_id(template, answers)]
    folder = package_folder(project)
    monkeypatch.syspath_prepend(str(project / "src"))
    for module_file in sorted(folder.glob("*.py")):
        module = folder.name if module_file.stem == "__init__" else f"{folder.name}.{module_file.stem}"
        importlib.import_module(module)
    model = importlib.import_module(f"{folder.name}.model")
    module_class = model.GAN if template == "gan" else model.Model
    assert issubclass(module_class, ManualOptimizationModule)
    if template == "gan":
        source = (folder / "model.py").read_text()
        assert ("EMA(" in source) == answers["ema"]
        assert ("StepSchedule" in source) == (answers["variant"] == "wgan-gp")
    else:
        names = tuple(name.strip() for name in answers["optimizers"].split(","))
        assert names == model.PARTS
        source = (folder / "model.py").read_text()
        assert [f'self.manual_step("{name}"' in source for name in names] == [True] * len(names)


def python_path(*folders: str) -> str:
    """``folders``, then this process's own ``PYTHONPATH``: a subprocess imports what this one does, manualopt too."""
    return os.pathsep.join([*folders, *filter(None, [os.environ.get("PYTHONPATH")])])


def run_suite(project: Path, *tests: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The project's own tests, in this environment, from its source folder (nothing installed)."""
    sources = os.pathsep.join(str(path.parents[1] / "src") for path in tests) if tests else str(project / "src")
    env = {**os.environ, **SUITE_ENV, "PYTHONPATH": python_path(sources)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if tests:
        command += ["--import-mode=importlib", "-c", str(config or project / "pyproject.toml"), *map(str, tests)]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)


def passed(result: subprocess.CompletedProcess[str]) -> int:
    """The number of passed tests in pytest's closing line; the output is shown when the run failed."""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    match = re.search(r"(\d+) passed", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def test_the_covering_set_covers_every_answer() -> None:
    for template in ("gan", "general"):
        rows = [full_answers(template, answers) for name, answers in COVERING if name == template]
        for key, values in choices(template).items():
            assert {row[key] for row in rows} == set(values), (template, key)
    gan_rows = [full_answers("gan", answers) for name, answers in COVERING if name == "gan"]
    assert {(row["variant"], row["data"]) for row in gan_rows} == set(
        itertools.product(*[choices("gan")[k] for k in ("variant", "data")])
    )


@pytest.mark.parametrize(("template", "answers"), COVERING, ids=[combination_id(t, a) for t, a in COVERING])
def test_baked_project_passes_its_own_tests(tmp_path: Path, template: str, answers: dict[str, Any]) -> None:
    project = bake(template, tmp_path, answers)
    assert passed(run_suite(project)) >= 5


def code_combinations() -> list[tuple[str, dict[str, Any]]]:
    """The cross product of the answers that change code (not the license), less the covering set."""
    covered = {combination_id(t, {k: v for k, v in full_answers(t, a).items() if k != "license"}) for t, a in COVERING}
    rows = []
    for template in ("gan", "general"):
        options = {key: values for key, values in choices(template).items() if key != "license"}
        for values in itertools.product(*options.values()):
            answers = dict(zip(options, values, strict=True))
            if combination_id(template, answers) not in covered:
                rows.append((template, answers))
    return rows


@pytest.mark.timeout(900)  # about 90 s on 2 busy cores; the suite's default limit is 300 s
def test_the_rest_of_the_cross_product_passes_its_own_tests(tmp_path: Path) -> None:
    """Every other code-changing combination: their suites in one pytest run (one import of torch and Lightning).

    The suites' names clash (tests/test_training.py), hence ``--import-mode=importlib``; the baked projects share one
    pytest configuration, read from the first.
    """
    rows = code_combinations()
    projects = [
        bake(template, tmp_path, {**answers, "project_name": f"Cross {template} {index}"})
        for index, (template, answers) in enumerate(rows)
    ]
    suites = [path for project in projects for path in sorted((project / "tests").glob("test_*.py"))]
    result = run_suite(tmp_path, *suites, config=projects[0] / "pyproject.toml")
    assert passed(result) >= 5 * len(projects)


# Notices a baked run keeps out of its console (cli.py's quiet_console, the configs): Lightning's tip about its cloud
# logger, a deprecation inside Lightning, the checkpoint folder that every run shares on purpose, a logging interval
# longer than an epoch.
QUIETED = ("litlogger", "LeafSpec", "exists and is not empty", "smaller than the logging interval")


def test_the_default_gan_trains_to_the_end_with_one_step_per_batch(tmp_path: Path) -> None:
    """The README's train command, shrunk to 2 epochs: ``python -m <package> fit --config configs/train.yaml``."""
    from sklearn.datasets import load_digits

    project = bake("gan", tmp_path, {})
    package = package_folder(project).name
    env = {**os.environ, **SUITE_ENV, "PYTHONPATH": python_path(str(project / "src"), str(ROOT))}
    command = [sys.executable, "-m", package, "fit", "--config", "configs/train.yaml", "--trainer.max_epochs=2"]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    batch_size = yaml.safe_load((project / "configs" / "train.yaml").read_text())["data"]["batch_size"]
    batches = 2 * (len(load_digits().images) // batch_size)  # an epoch drops its last incomplete batch
    assert f"global_step: {batches} " in result.stdout
    import torch

    checkpoint = torch.load(project / "runs" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == batches
    assert list((project / "runs" / "version_0" / "samples").glob(f"*step={batches}.png"))

    # the README's resume, one epoch more: the console holds no notice that the user cannot act on
    resumed = subprocess.run(
        [*command[:-1], "--trainer.max_epochs=3", "--ckpt_path=last"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert f"global_step: {batches // 2 * 3} " in resumed.stdout
    console = result.stdout + result.stderr + resumed.stdout + resumed.stderr
    for notice in QUIETED:
        assert notice not in console
    # not a terminal: one progress line per epoch, no bar redrawn with carriage returns
    assert "\r" not in console
    assert [line.split("  ")[:2] for line in result.stdout.splitlines() if line.startswith("epoch ")] == [
        ["epoch 1/2", f"step {batches // 2}"],
        ["epoch 2/2", f"step {batches}"],
    ]


# The 2-process runs stop here when they hang: their whole process group is killed (the DDP launcher's children too).
DDP_LIMIT = 240
# Per process: the epochs and batches of a 2-process run, and the periods it is shrunk to (in epochs and steps), so
# that every periodic action fires at least once: sample grids, periodic and end-of-run checkpoints, validation.
DDP_EPOCHS, DDP_BATCHES, DDP_EVERY_N_EPOCHS, DDP_EVERY_N_STEPS = 4, 2, 2, 4


def shrunk_config(project: Path) -> Path:
    """The project's ``configs/train.yaml`` with its periods shrunk to ``DDP_EVERY_N_*`` (the callbacks unchanged)."""
    config = yaml.safe_load((project / "configs" / "train.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        arguments = callback.get("init_args", {})
        for key, value in (("every_n_train_steps", DDP_EVERY_N_STEPS), ("every_n_epochs", DDP_EVERY_N_EPOCHS)):
            if arguments.get(key):
                arguments[key] = min(arguments[key], value)
    path = project / "configs" / "short.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(2 * DDP_LIMIT + 60)
@pytest.mark.parametrize(("template", "answers"), COVERING, ids=[combination_id(t, a) for t, a in COVERING])
def test_the_multi_gpu_config_trains_on_two_processes(tmp_path: Path, template: str, answers: dict[str, Any]) -> None:
    """``configs/multi_gpu.yaml`` on 2 CPU processes: DDP trains each bake of the covering set to its end.

    The run is long enough for every periodic action to fire (sample grids, periodic checkpoints, last.ckpt at each
    epoch end, validation, the end-of-run report): under DDP each of them must reach every collective call on every
    process, or the run waits for ever.

    Without its ``ddp_find_unused_parameters_true`` Lightning's DDP stops at the first batch (each ``manual_step``'s
    backward pass reaches one network only); the second half, for the defaults, checks that the config is what makes
    the difference.
    """
    project = bake(template, tmp_path, answers)
    package = package_folder(project).name
    env = {**os.environ, **SUITE_ENV, "PYTHONPATH": python_path(str(project / "src"), str(ROOT))}
    command = [sys.executable, "-m", package, "fit", "--config", str(shrunk_config(project))]
    two_processes = [
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        f"--trainer.max_epochs={DDP_EPOCHS}",
        f"--trainer.limit_train_batches={DDP_BATCHES}",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
    ]
    if answers.get("data") == "image-folder":  # a few small batches per process
        batch_size = 8
        shapes = [
            sys.executable,
            "-m",
            f"{package}.shapes",
            "data/images",
            "--count",
            str(2 * batch_size * DDP_BATCHES),
        ]
        subprocess.run(shapes, cwd=project, env=env, check=True, capture_output=True, timeout=300)
        two_processes.append(f"--data.batch_size={batch_size}")
    with_config = [*command, "--config", "configs/multi_gpu.yaml", *two_processes]
    result = run_in_own_group(with_config, env, DDP_LIMIT, cwd=project)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    steps = DDP_EPOCHS * DDP_BATCHES
    assert f"global_step: {steps} " in result.stdout  # the end-of-run report, once
    assert result.stdout.count("global_step: ") == 1
    import torch

    checkpoints = project / "runs" / "checkpoints"
    checkpoint = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == steps
    if template == "gan":
        periodic = sorted(path.name for path in checkpoints.glob("epoch=*.ckpt"))
        expected = [f"step={step}.ckpt" for step in range(DDP_EVERY_N_STEPS, steps + 1, DDP_EVERY_N_STEPS)]
        assert [name.split("-")[-1] for name in periodic] == expected
        grids = sorted((project / "runs" / "version_0" / "samples").glob("*.png"))
        epochs = range(DDP_EVERY_N_EPOCHS, DDP_EPOCHS + 1, DDP_EVERY_N_EPOCHS)
        assert [path.name for path in grids] == [
            f"epoch={epoch - 1:03d}-step={epoch * DDP_BATCHES}.png" for epoch in epochs
        ]
        assert f"sample grids: {len(grids)}" in result.stdout
        if answers.get("logger") == "tensorboard":
            assert list((project / "runs" / "version_0").glob("events.out.tfevents.*"))
    else:
        assert "val_loss: " in result.stdout
        assert list(checkpoints.glob("epoch=*.ckpt"))  # the best by val_loss
    assert not (project / "runs" / "version_1").exists()  # one logger folder: process 0 writes
    if answers:
        return

    without = [*command, "--trainer.strategy=ddp", *two_processes, "--trainer.default_root_dir=runs-ddp"]
    result = run_in_own_group(without, env, DDP_LIMIT, cwd=project)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "ddp_find_unused_parameters_true" in output, output[-6000:]  # manualopt's explanation names it


def make_dry_run(project: Path, *arguments: str, **variables: str) -> str:
    """The commands ``make -n`` prints, outside any virtual environment unless ``VIRTUAL_ENV`` is given."""
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "CPU", "VENV")}
    command = ["make", "-n", *arguments]
    result = subprocess.run(command, cwd=project, env={**env, **variables}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("template", ["gan", "general"])
def test_the_makefile_tests_lints_and_installs_where_it_is_asked_to(tmp_path: Path, template: str) -> None:
    """``make test`` runs the tests only; ``make lint`` runs ruff; ``make`` installs into the environment in use.

    Outside an environment it creates .venv; inside one (``VIRTUAL_ENV``) it installs there and makes none of its own;
    ``CPU=1`` installs PyTorch's CPU build; ``make clean`` removes only what the project made.
    """
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    project = bake(template, tmp_path, {})
    package = package_folder(project).name
    (project / ".venv").mkdir()
    (project / ".venv" / f".installed-{package}").touch()  # installed: the targets' own commands only
    test = make_dry_run(project, "test")
    assert ".venv/bin/python -m pytest" in test
    assert "ruff" not in test
    lint = make_dry_run(project, "lint")
    assert ".venv/bin/python -m ruff check ." in lint
    assert "-m pytest" not in lint

    own = tmp_path / "environment"
    install = make_dry_run(project, "install", VIRTUAL_ENV=str(own))
    assert f"{own}/bin/python -m pip install torch" in install
    assert "download.pytorch.org" not in install
    assert ".venv" not in install
    assert f"touch {own}/.installed-{package}" in install
    cpu = make_dry_run(project, "install", "CPU=1", VIRTUAL_ENV=str(own))
    assert f"{own}/bin/python -m pip install torch --index-url https://download.pytorch.org/whl/cpu" in cpu
    clean = make_dry_run(project, "clean", VIRTUAL_ENV=str(own))
    assert f"rm -rf {own}" not in clean
    assert "rm -rf .venv " in clean
    fresh = make_dry_run(project, "install", "VENV=fresh")
    assert "python3 -m venv fresh" in fresh


BAD_NAMES = [
    (
        {"project_name": "My GAN", "package_name": "my gan"},
        'package_name "my gan" is not a valid name (it holds spaces',
    ),
    ({"project_name": "My GAN", "package_name": "my-gan"}, "holds dashes"),
    ({"project_name": "Bob's GAN"}, 'package_name "bob\'s_gan" is not a valid name (it holds punctuation'),
    ({"project_name": "Café GAN"}, "it holds non-ASCII characters"),
    ({"project_name": "3D GAN"}, "it starts with a digit"),
    ({"project_name": "class"}, 'package_name "class" is a Python keyword'),
    ({"project_name": "match"}, 'package_name "match" is a Python keyword'),
    ({"project_name": "json"}, "the project's package would hide it"),
    ({"project_name": "torch"}, "the project's package would hide it"),
    ({"project_slug": "../escaped"}, 'project_slug "../escaped"'),
    (
        {"project_name": 'x"\n[tool.evil]\nx = "1'},
        "project_name 'x\"\\n[tool.evil]\\nx = \"1' holds characters that do not print",
    ),
    ({"package_name": 'x"]\nimport os  #'}, "is not a valid name"),
    ({"package_name": "__import__('os').system('true')"}, "is not a valid name"),
    ({"package_name": "os;import shutil"}, "it holds punctuation"),
    ({"description": "line one\u2028line two"}, "holds characters that do not print (U+2028"),
    ({"author_name": "Eve\u202e"}, "holds characters that do not print (U+202E"),
    ({"author_email": "not an address"}, "is not an e-mail address"),
    ({"manualopt_requirement": "manualopt; rm -rf ~"}, "must be one pip requirement, path or URL"),
    ({"manualopt_requirement": "--index-url=http://example.org"}, "must be one pip requirement, path or URL"),
]
BAD_OPTIMIZERS = [
    ("encoder,encoder", "names encoder twice"),
    ("encoder,2nd", 'optimizer name "2nd" is not a valid name (it starts with a digit'),
    ("encoder,optimizer", 'optimizer name "optimizer" is reserved'),
    ("encoder,for", 'optimizer name "for" is a Python keyword'),
    (" , ", 'optimizer name "" is not a valid name (it is empty'),
    ("a,b,c,d,e,f,g,h,i", "names 9 optimizers; at most 8"),
]


def assert_refused(template: str, tmp_path: Path, answers: dict[str, Any], message: str, capfd: Any) -> None:
    output = tmp_path / "out"
    output.mkdir()
    with pytest.raises(FailedHookException):
        bake(template, output, answers, replay=tmp_path / "replay")
    stderr = capfd.readouterr().err
    assert message in stderr
    assert "The project was not created" in stderr
    assert "Nothing was written." in stderr
    assert list(output.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "replay"]


@pytest.mark.parametrize(("answers", "message"), BAD_NAMES, ids=[str(i) for i in range(len(BAD_NAMES))])
@pytest.mark.parametrize("template", ["gan", "general"])
def test_bad_answers_are_refused_before_anything_is_written(
    tmp_path: Path, capfd: Any, template: str, answers: dict[str, Any], message: str
) -> None:
    assert_refused(template, tmp_path, answers, message, capfd)


@pytest.mark.parametrize(("optimizers", "message"), BAD_OPTIMIZERS)
def test_bad_optimizer_names_are_refused(tmp_path: Path, capfd: Any, optimizers: str, message: str) -> None:
    assert_refused("general", tmp_path, {"optimizers": optimizers}, message, capfd)


def test_a_refused_name_comes_with_names_that_work(tmp_path: Path, capfd: Any) -> None:
    assert_refused("gan", tmp_path, {"project_name": "Zoë's 3D GAN"}, "it holds non-ASCII characters", capfd)
    capfd.readouterr()
    with pytest.raises(FailedHookException):
        bake("gan", tmp_path / "out", {"project_name": "Zoë's 3D GAN"}, replay=tmp_path / "replay")
    stderr = capfd.readouterr().err
    assert "manualopt new gan project_slug=zoes-3d-gan package_name=zoes_3d_gan" in stderr
    project = bake("gan", tmp_path / "out", {"project_name": "Zoë's 3D GAN", "project_slug": "zoes-3d-gan"})
    assert (project / "src" / "zoes_3d_gan" / "model.py").is_file()


HOSTILE = 'Zoë\'s "GAN" \\ """ \'\'\' ]\n'.strip() + " [tool.evil] x = 1 # $(whoami) `id` ${HOME}"


@pytest.mark.parametrize("template", ["gan", "general"])
def test_names_are_data_not_code(tmp_path: Path, template: str) -> None:
    """Quotes, backslashes, brackets and shell syntax in free text end up as that text, and only where text goes."""
    answers = {"project_name": HOSTILE, "project_slug": "hostile", "author_name": 'O\'Brien "Bob" \\ [x]'}
    project = bake(template, tmp_path, answers)
    metadata = tomllib.loads((project / "pyproject.toml").read_text())
    assert set(metadata) == {"build-system", "project", "tool"}
    assert metadata["project"]["description"].startswith(HOSTILE + ": ")
    assert metadata["project"]["authors"] == [{"name": answers["author_name"], "email": "you@example.com"}]
    assert HOSTILE in (project / "README.md").read_text()
    for path in project.rglob("*.py"):
        assert "Zoë" not in path.read_text(), path
    check = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(project)], capture_output=True)
    assert check.returncode == 0, check.stdout


def load_filters(template: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"filters_{template}", TEMPLATES / template / "manualopt_template_filters.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "text",
    ["plain", 'a "quoted" name', "back\\slash", '"""', "'''", "tab\tnew\nline", "\x00\x1f\x7f", "Zoë 😀", "x\\u0041"],
)
def test_toml_string_round_trips(text: str) -> None:
    toml_string = load_filters("gan").toml_string
    assert tomllib.loads(f"key = {toml_string(text)}\nother = 1")["key"] == text


def test_the_templates_share_their_hook_and_filters() -> None:
    for shared in ("hooks/pre_gen_project.py", "manualopt_template_filters.py"):
        assert (TEMPLATES / "gan" / shared).read_text() == (TEMPLATES / "general" / shared).read_text(), shared


def test_cookiecutter_reaches_a_template_in_a_repository_folder(tmp_path: Path) -> None:
    """``cookiecutter <repo> --directory templates/gan``, with a git repository holding this project's templates."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repository = tmp_path / "repository"
    shutil.copytree(TEMPLATES, repository / "templates", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "templates"]):
        subprocess.run([*git, *command], cwd=repository, check=True, capture_output=True)
    config = {"replay_dir": str(tmp_path / "replay"), "cookiecutters_dir": str(tmp_path / "clones")}
    made = cookiecutter_main.cookiecutter(
        f"git+file://{repository}",
        directory="templates/gan",
        no_input=True,
        output_dir=str(tmp_path / "out"),
        extra_context={"variant": "wgan-gp"},
        default_config=config,
    )
    assert "StepSchedule.every(critic=1" in (Path(made) / "src" / "digit_gan" / "model.py").read_text()


def test_the_wheel_ships_every_template_file(tmp_path: Path) -> None:
    """A wheel built from the sources holds the templates under manualopt/templates, dotfiles included."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("manualopt", "templates"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path)]
    result = subprocess.run([*build, str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("manualopt-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"manualopt/templates/{p.relative_to(source / 'templates').as_posix()}"
        for p in (source / "templates").rglob("*")
        if p.is_file()
    }
    expected |= {
        f"manualopt/{p.relative_to(source / 'manualopt').as_posix()}"
        for p in (source / "manualopt").rglob("*")
        if p.is_file()
    }
    assert expected <= shipped, sorted(expected - shipped)
    assert "manualopt/templates/gan/{{cookiecutter.project_slug}}/.github/workflows/ci.yml" in shipped
    assert not [name for name in shipped if "__pycache__" in name]
    entry_points = next(name for name in shipped if name.endswith("entry_points.txt"))
    assert "manualopt = manualopt._cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_hooks_and_filters_pass_ruff() -> None:
    """The templates' own Python (hooks, Jinja filters) is valid Python before rendering, linted like the library."""
    files = [str(path) for path in sorted(TEMPLATES.glob("*/hooks/*.py")) + sorted(TEMPLATES.glob("*/*.py"))]
    assert len(files) == 6
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", *files], cwd=ROOT, capture_output=True
        )
        assert result.returncode == 0, result.stdout
