"""The README's first example runs as written (extracted between its markers, as .ci/run extracts
the test command) on what ``detbin demo`` leaves: ``runs/demo/data`` and the teacher's ``best.pt``.

The demo itself has its own tests (test_demo.py); here a tiny generated stand-in of its outputs
takes its place, and every ``binarize`` line gets a 2-step schedule appended (the lines are
otherwise run word for word, in the order written, from one working folder).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detbin.app.build.data import loader_workers
from detbin.cli import app
from detbin.data.synthetic import write_dataset
from detbin.models.detector import build_detector
from helpers import toy_config

README = Path(__file__).resolve().parents[1] / "README.md"
SHORT = ["--set", "train.max_iterations=2", "--set", "train.batch_size=2", "--set", "eval.every=0",
         "--set", "train.log_every=1"]


def example_lines(text: str, marker: str = "first-example") -> list[str]:
    """The commands between ``<!-- marker -->`` and ``<!-- /marker -->``, comments stripped."""
    block = re.search(rf"<!-- {marker} -->(.*?)<!-- /{marker} -->", text, re.S)
    assert block is not None, f"README.md has no {marker} block"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith(("```", "#"))]


def test_example_lines_are_extracted_as_written():
    text = "x\n<!-- first-example -->\n```bash\ndetbin a --b c   # why\n\ndetbin d\n```\n<!-- /first-example -->\n"
    assert example_lines(text) == ["detbin a --b c", "detbin d"]


@pytest.mark.slow
def test_the_readme_first_example_runs_as_written(tmp_path, monkeypatch):
    lines = example_lines(README.read_text(encoding="utf-8"))
    assert [shlex.split(line)[1] for line in lines] == ["binarize", "eval", "profile", "export"]
    monkeypatch.chdir(tmp_path)
    write_dataset(Path("runs/demo/data"), train=4, test=2)  # what `detbin demo` writes, in small
    teacher = Path("runs/demo/teacher/weights/best.pt")
    teacher.parent.mkdir(parents=True)
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), teacher)
    runner = CliRunner()
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "detbin"
        args = words[1:] + (SHORT + ["--no-progress"] if words[1] == "binarize" else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (line, result.stdout, result.stderr)
    assert Path("runs/binarize/ida-det/weights/best.pt").is_file()
    assert list(Path("runs/export").glob("*/*.safetensors"))


@pytest.mark.slow
def test_binarize_without_config_says_in_one_line_which_file_it_uses(tmp_path, monkeypatch, recwarn):
    """No CUDA here: the tiny CPU file, named on stderr with the reason; no raw library warning."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = write_dataset(tmp_path / "data", train=4, test=2)
    teacher = tmp_path / "teacher.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), teacher)
    result = CliRunner().invoke(app, ["binarize", "--recipe", "reactnet", "--teacher", str(teacher), "--data", str(data),
                                      "--project", str(tmp_path / "runs"), "--no-progress", *SHORT])
    assert result.exit_code == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("no --config")]
    assert len(said) == 1 and "recipes/reactnet/tiny_synthetic.yaml (the tiny CPU setting, no CUDA device here" in said[0]
    # train.workers above the cores is capped to them, so torch's DataLoader has nothing to warn about
    # (checked on the function: worker processes forked from the test process itself are not wanted here)
    assert loader_workers(64) == len(os.sched_getaffinity(0)) and loader_workers(1) == 1
    assert [str(w.message) for w in recwarn if "Warning" in type(w.message).__name__] == []
