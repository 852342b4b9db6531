"""detbin demo: --fresh removes only what the demo wrote; an interrupted stage resumes from its last.pt."""

from __future__ import annotations

import json

import pytest

from detbin.app.demo import STAMP, clean, run_demo
from detbin.core.errors import DataError, TrainingInterrupted
from detbin.data.synthetic import write_dataset
from detbin.training.hook import Hook

FAST = ["train.max_iterations=6", "train.checkpoint_every=2", "train.batch_size=2", "train.log_every=2",
        "eval.batch_size=8"]


def test_fresh_removes_only_what_the_demo_wrote(tmp_path):
    root = tmp_path / "demo"
    write_dataset(root / "data", 4, 2, seed=0)
    for stage in ("teacher", "student"):
        (root / stage / "weights").mkdir(parents=True)
        (root / stage / STAMP).write_text(json.dumps({"key": {}, "complete": True}))
    (root / "notes.txt").write_text("mine")
    (root / "mine").mkdir()
    (root / "mine" / "model.pt").write_text("also mine")
    removed = clean(root)
    assert sorted(p.name for p in removed) == ["data", "student", "teacher"]
    assert (root / "notes.txt").read_text() == "mine" and (root / "mine" / "model.pt").is_file()


def test_a_stage_folder_the_demo_did_not_write_is_refused(tmp_path):
    (tmp_path / "demo" / "teacher").mkdir(parents=True)
    (tmp_path / "demo" / "teacher" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="was not written by detbin demo"):
        run_demo(tmp_path / "demo", lambda title: [], lambda text: None, overrides={"teacher": FAST}, images=(16, 8))
    assert (tmp_path / "demo" / "teacher" / "precious.txt").read_text() == "keep me"


class _StopAt(Hook):
    def __init__(self, at):
        self.at = at

    def after_step(self, trainer):
        if trainer.iteration == self.at:
            raise KeyboardInterrupt


class _FirstIteration(Hook):
    def __init__(self, seen):
        self.seen = seen

    def before_train(self, trainer):
        self.seen.append(trainer.iteration)


@pytest.mark.slow
def test_an_interrupted_stage_resumes_from_its_last_checkpoint(tmp_path):
    root = tmp_path / "demo"
    overrides = {"teacher": FAST, "student": FAST}
    with pytest.raises(TrainingInterrupted):
        run_demo(root, lambda title: [_StopAt(4)] if "teacher" in title else [], lambda text: None,
                 overrides=overrides, images=(16, 8))
    stamp = json.loads((root / "teacher" / STAMP).read_text())
    assert stamp["complete"] is False and (root / "teacher" / "weights" / "last.pt").is_file()
    seen: list[int] = []
    result = run_demo(root, lambda title: [_FirstIteration(seen)], lambda text: None, overrides=overrides,
                      images=(16, 8))
    assert seen == [4, 0]  # the teacher continues at iteration 4; the student starts from scratch
    assert json.loads((root / "teacher" / STAMP).read_text())["complete"] is True
    assert set(result.seconds) == {"data", "teacher", "student", "compare"}
    again = run_demo(root, lambda title: [], lambda text: None, overrides=overrides, images=(16, 8))
    assert [row.reused for row in again.rows] == [True, True]
