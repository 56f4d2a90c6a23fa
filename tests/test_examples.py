"""The demo program runs as `make demo` runs it, on a shrunk schedule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_quickstart_gan(tmp_path: Path, capsys: object) -> None:
    demo = _load("quickstart_gan")
    result = demo.main(["--epochs", "7", "--out", str(tmp_path), "--no-progress"])
    assert result["global_step"] == 7 * 32  # one training step per batch
    assert result["stock_global_step"] == 7 * 32 + 7 * 16  # stock Lightning adds the generator's steps
    assert result["updates"] == {"generator": 7 * 16, "discriminator": 7 * 32}
    assert result["checkpoints"] == ["epoch=3-step=100.ckpt", "epoch=6-step=200.ckpt"]
    assert "per-optimizer updates" in capsys.readouterr().out  # type: ignore[attr-defined]


def test_stock_problems_table(capsys: object) -> None:
    _load("stock_problems").main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]  # type: ignore[attr-defined]
    manualopt = {row.split(" | ")[0]: row.split(" | ")[2] for row in rows[1:]}
    assert len(manualopt) == 5
    assert "global_step 20 after 20 batches; checkpoints at steps [4, 8, 12, 16, 20]" in rows[1]
    assert "global_step 10 after 10 batches" in rows[2]
    assert "refused" in rows[3]
    assert "global_step 20 after 20 batches; checkpoints at steps [10, 20]" in rows[5]
