"""Issue 11, hardening: a checkpoint never runs code, bad input never hangs or shows a traceback,
output folders fail early and clearly, and the run folder stays consistent (history, temporaries,
non-finite weights). The bad-input corpus is ``test_bad_inputs.py``; Ctrl-C + resume is in
``test_resume.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import typer
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from detbin.app import scoring
from detbin.app.build import build_dataset
from detbin.cli import app
from detbin.cli.common import handles_errors
from detbin.config import DataSplit, dump, read_yaml, recipes_dir
from detbin.core.errors import CheckpointError, DataError, DetbinError, RecipeNotFound
from detbin.data.coco_dataset import CocoDetection
from detbin.data.datasets import VocDetection, collate
from detbin.data.synthetic import CLASSES, write_dataset
from detbin.models import checkpoint
from detbin.models.detector import build_detector
from detbin.training import plugins
from detbin.training.hooks import CheckpointHook, MetricsLogger
from detbin.training.recipe import Recipe
from detbin.training.sampler import EpochSampler
from detbin.training.trainer import NonFiniteWeights, Trainer
from detbin.app.runner import resume_options
from helpers import toy_config
from test_bad_inputs import write_student

SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")
ZEN = "Beautiful is better than ugly"
runner = CliRunner()

# A module that leaves a file behind the moment it is imported (and would do worse).
EVILMOD = """
from pathlib import Path
Path(__file__).with_name("EVILMOD_RAN").write_text("imported")
class Recipe:
    name = "evil"
"""


PROGRESS_LINE = re.compile(r"^\S[^:]*: \d+/\d+ \(\d+%\) ")


def one_line(result, *fragments: str) -> str:
    """The single ``error:`` line of a failed command (exit code 1, no traceback)."""
    # A run that fails mid-training has printed its progress lines first; they are not error output.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert result.exit_code == 1, (result.exception, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def binarize(*args: str) -> list[str]:
    return ["binarize", "--recipe", "reactnet", "--config", SMOKE, "--no-progress", *args]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("voc") / "voc", train=4, test=3)


# --- 1. a checkpoint never imports a module -------------------------------------------------------------

@pytest.mark.slow
def test_python_m_detbin_profile_never_imports_the_checkpoints_recipe(tmp_path):
    """The issue's reproduction: ``evilmod.py`` in the working folder (``python -m`` puts it on
    sys.path) and a ``best.pt`` naming ``evilmod:Recipe``; and ``this:s``, which printed the Zen."""
    (tmp_path / "evilmod.py").write_text(EVILMOD)
    write_student(tmp_path / "model.pt", recipe="evilmod:Recipe")
    write_student(tmp_path / "zen.pt", recipe="this:s")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for model, name in (("model.pt", "'evilmod:Recipe'"), ("zen.pt", "'this:s'")):
        done = subprocess.run([sys.executable, "-m", "detbin", "profile", model], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: {model}: unknown recipe {name}") and "installed: " in lines[0]
        assert ZEN not in done.stdout + done.stderr
    assert not (tmp_path / "EVILMOD_RAN").exists(), "evilmod was imported"


def test_checkpoint_recipe_resolves_through_installed_entry_points_only(tmp_path, monkeypatch):
    """In-process, with the module importable: loading refuses it; typing it on the command line
    (the escape hatch) does import it, which shows the refusal is what kept it out."""
    (tmp_path / "evilmod.py").write_text(EVILMOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = write_student(tmp_path / "model.pt", recipe="evilmod:Recipe")
    from detbin.app.build import load_model

    with pytest.raises(RecipeNotFound, match=r"model\.pt: unknown recipe 'evilmod:Recipe'.*installed: .*reactnet"):
        load_model(model)
    assert not (tmp_path / "EVILMOD_RAN").exists() and "evilmod" not in sys.modules
    with pytest.raises(DetbinError):  # typed by the user: imported (then refused: not a detbin.Recipe)
        plugins.load("evilmod:Recipe")
    assert (tmp_path / "EVILMOD_RAN").read_text() == "imported"
    sys.modules.pop("evilmod")  # imported from this test's folder; not for the next test


def fake_run_folder(folder: Path, recipe: str) -> Path:
    """What ``--resume`` reads first: recipe.yaml, args.yaml and weights/last.pt."""
    raw = {**read_yaml(Path(SMOKE)), "recipe": recipe}
    (folder / "weights").mkdir(parents=True)
    (folder / "recipe.yaml").write_text(dump(raw))
    (folder / "args.yaml").write_text(dump({"verb": "binarize", "data": None, "teacher": None, "set": []}))
    (folder / "weights" / "last.pt").write_bytes(b"never read")
    return folder


def test_resume_imports_a_module_recipe_only_when_typed(tmp_path, monkeypatch):
    (tmp_path / "evilmod.py").write_text(EVILMOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = fake_run_folder(tmp_path / "runs" / "binarize" / "r", "evilmod:Recipe")
    line = one_line(runner.invoke(app, ["binarize", "--resume", str(run)]), str(run / "recipe.yaml"),
                    "'evilmod:Recipe' is a module reference", "add --recipe evilmod:Recipe")
    assert "resume" in line
    assert not (tmp_path / "EVILMOD_RAN").exists() and "evilmod" not in sys.modules
    one_line(runner.invoke(app, ["binarize", "--resume", str(run), "--recipe", "reactnet"]),
             "trained with recipe 'evilmod:Recipe', not --recipe reactnet")
    config, _, options = resume_options(run, "evilmod:Recipe")  # typed: allowed through (imported when built)
    assert config.recipe == "evilmod:Recipe" and options.resume == run
    assert not (tmp_path / "EVILMOD_RAN").exists()


# --- 3. a split that cannot fill a batch fails at once; an empty epoch never spins -------------------------

@pytest.mark.parametrize("split, extra, message", [
    (b"", [], "is empty (0 images), fewer than train.batch_size 2"),
    (b"000001\n000002\n000003\n", ["--set", "train.batch_size=4"], "has 3 images, fewer than train.batch_size 4"),
])
def test_a_split_that_cannot_fill_a_batch_fails_in_seconds(tmp_path, voc, teacher, split, extra, message):
    root = Path(shutil.copytree(voc, tmp_path / "voc"))
    (root / "ImageSets" / "Main" / "trainval.txt").write_bytes(split)
    start = time.monotonic()
    result = runner.invoke(app, binarize("--teacher", str(teacher), "--data", str(root), "--project",
                                         str(tmp_path / "runs"), *extra))
    assert time.monotonic() - start < 10
    one_line(result, "data.train: split 'trainval'", str(root / "ImageSets" / "Main" / "trainval.txt"), message)
    assert not (tmp_path / "runs" / "binarize" / "reactnet").exists(), "failed before the run folder was made"


def test_the_trainer_raises_when_an_epoch_yields_no_batch(toy_detector):
    """The trainer's own guard (a library caller may skip the runner's check): no infinite loop."""
    loader = DataLoader([], batch_size=2, sampler=EpochSampler(0), collate_fn=collate, drop_last=True)
    trainer = Trainer(toy_detector, Recipe(), loader, torch.optim.SGD(toy_detector.model.parameters(), lr=0.1), 5)
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the trainer spun on an empty loader"))
    signal.alarm(20)
    try:
        with pytest.raises(DataError, match=r"yielded no batch in epoch 0 \(0 images, batch size 2"):
            trainer.train()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert trainer.iteration == 0


# --- 5. output folders: found unwritable before any long work ----------------------------------------------

@contextlib.contextmanager
def cannot_write(folder: Path):
    """``folder`` exists but this process may not write into it (EACCES), also when run as root."""
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)  # root writes anywhere; act as nobody for the command
    try:
        yield
    finally:
        os.seteuid(0)


def test_permission_denied_project_is_found_before_work(tmp_path, teacher):
    project = Path(tempfile.mkdtemp(dir="/tmp")) / "locked"  # outside pytest's private folder
    project.parent.chmod(0o755)
    try:
        with cannot_write(project):
            trained = runner.invoke(app, binarize("--teacher", str(teacher), "--project", str(project)))
            scored = runner.invoke(app, ["eval", str(teacher), "--dataset", "synthetic", "--project", str(project)])
        one_line(trained, f"{project}/binarize: cannot write the run folder (--project) (Permission denied)",
                 "choose a folder you may write to")
        one_line(scored, f"{project}/eval: cannot write the eval run folder (--project) (Permission denied)")
    finally:
        shutil.rmtree(project.parent)


FILESYSTEMS = r'''
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from typer.testing import CliRunner
from detbin.cli import app
from detbin.models import checkpoint
SMOKE, TEACHER = {smoke!r}, {teacher!r}
results = {{}}
def run(name, args):
    r = CliRunner().invoke(app, args)
    results[name] = [r.exit_code, r.stderr, repr(r.exception)]
binarize = ["binarize", "--recipe", "reactnet", "--config", SMOKE, "--teacher", TEACHER, "--no-progress"]
run("erofs train", binarize + ["--project", "/mnt/ro/runs"])
run("erofs eval", ["eval", TEACHER, "--dataset", "synthetic", "--project", "/mnt/ro/runs"])
run("enospc before training", binarize + ["--project", "/mnt/tiny/runs"])
run("enospc at the first checkpoint", binarize + ["--project", "/mnt/small/runs"])
try:
    checkpoint.save_atomic({{"w": torch.zeros(1_000_000)}}, __import__("pathlib").Path("/mnt/tiny/x/last.pt"))
except Exception as exc:
    results["save_atomic"] = [type(exc).__name__, str(exc), isinstance(exc, OSError)]
import os
results["left"] = sorted(os.listdir("/mnt/tiny/x")) + sorted(os.listdir("/mnt/small/runs/binarize/reactnet/weights"))
print("RESULTS" + json.dumps(results))
'''


@pytest.mark.slow
def test_read_only_and_full_file_systems(tmp_path, teacher):
    """Real EROFS and ENOSPC (tmpfs mounts in a private user + mount namespace): one line each,
    a full disk before training when even the weights cannot fit, and torch's ``enforce fail ...
    unexpected pos`` of a write that ran out of space, mapped."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -rm (user + mount namespaces) to mount a read-only and a full tmpfs")
    script = tmp_path / "filesystems.py"
    script.write_text(FILESYSTEMS.format(tests=str(Path(__file__).parent), smoke=SMOKE, teacher=str(teacher)))
    mounts = ("mkdir -p /mnt/ro /mnt/tiny /mnt/small && mount -t tmpfs -o ro,size=1m none /mnt/ro && "
              "mount -t tmpfs -o size=2m none /mnt/tiny && mount -t tmpfs -o size=6m none /mnt/small && ")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", mounts + f"exec {sys.executable} {script}"],
                          capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = json.loads(done.stdout.split("RESULTS")[-1]) if "RESULTS" in done.stdout else pytest.fail(done.stderr)
    for name, fragment in (("erofs train", "/mnt/ro/runs: cannot write the run folder (--project) "
                                           "(Read-only file system)"),
                           ("erofs eval", "/mnt/ro/runs: cannot write the eval run folder (--project) "
                                          "(Read-only file system)"),
                           ("enospc before training", "/mnt/tiny/runs/binarize/reactnet: "),
                           ("enospc at the first checkpoint", "/mnt/small/runs/binarize/reactnet/weights/last.pt: "
                                                              "cannot write the checkpoint")):
        code, stderr, exception = out[name]
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and "Traceback" not in stderr, (name, stderr, exception)
        assert fragment in lines[0], (name, lines[0])
    assert re.search(r"MB free, but weights/last\.pt needs more than \d+\.\d\d MB \(the student's weights alone\)",
                     out["enospc before training"][1])
    assert "the disk is probably full" in out["enospc at the first checkpoint"][1]
    kind, message, is_os_error = out["save_atomic"]
    assert kind == "OutputError" and is_os_error and "unexpected pos" in message and "disk is probably full" in message
    assert out["left"] == [], "no temporary file of a failed write is left behind"


# --- 6. error text is printed literally --------------------------------------------------------------------

def test_error_printer_prints_markup_literally(capsys):
    @handles_errors
    def fails() -> None:
        raise DataError("runs/[/old]/x.json: bbox of [red]a[/red] must be [x, y, width, height]\nsecond line")

    with pytest.raises(typer.Exit) as stopped:
        fails()
    assert stopped.value.exit_code == 1
    assert capsys.readouterr().err == "error: runs/[/old]/x.json: bbox of [red]a[/red] must be [x, y, width, height] " \
                                      "second line\n"


def test_coco_bbox_hint_keeps_its_brackets(tmp_path, voc):
    path = tmp_path / "bad_bbox.json"
    data = json.loads((voc / "annotations" / "instances_test.json").read_text())
    data["annotations"][0]["bbox"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["eval", "--detections", str(path), "--dataset", "coco", "--data", str(voc),
                                 "--split", "test", "--annotations", str(path), "--project", str(tmp_path)])
    one_line(result, "bad_bbox.json: annotation ", "has bbox [1, 2, 3]; COCO boxes are [x, y, width, height]")


def test_eval_table_prints_class_and_file_names_literally(tmp_path, voc):
    """A class called ``[red]circle`` and a detections folder called ``[bold]dets`` print as written."""
    root = Path(shutil.copytree(voc, tmp_path / "voc"))
    (root / "labels.txt").write_text("\n".join(("[red]circle", *CLASSES[1:])) + "\n")
    for xml in (root / "Annotations").glob("*.xml"):
        xml.write_text(xml.read_text().replace("<name>circle</name>", "<name>[red]circle</name>"))
    dets = tmp_path / "[bold]dets"
    dets.mkdir()
    (dets / "comp4_det_test_[red]circle.txt").write_text("000005 0.9 10 10 40 40\n")
    result = runner.invoke(app, ["eval", "--detections", str(dets), "--dataset", "synthetic", "--data", str(root),
                                 "--project", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.stderr
    assert "[red]circle" in result.stdout and "AP [bold]dets" in result.stdout


# --- 7. smaller holes --------------------------------------------------------------------------------------

def test_data_paths_stay_inside_the_root_unless_allowed(tmp_path, voc):
    """A COCO file_name pointing at a real image outside --data: refused; allowed by the switch
    (``--allow-outside-root`` on eval, ``data.<split>.allow_outside_root`` in a recipe file)."""
    outside = Path(shutil.copy(voc / "JPEGImages" / "000005.jpg", tmp_path / "elsewhere.jpg"))
    data = json.loads((voc / "annotations" / "instances_test.json").read_text())
    data["images"][0]["file_name"] = str(outside)
    path = tmp_path / "outside.json"
    path.write_text(json.dumps(data))
    split = dict(source="coco", root=str(voc), split="test", annotations=str(path))
    with pytest.raises(DataError, match=r"outside\.json: images\[0\]\.file_name: path '.*elsewhere\.jpg' leads "
                                        r"outside the data root.*--allow-outside-root"):
        build_dataset(DataSplit(**split))
    dataset = build_dataset(DataSplit(**split, allow_outside_root=True))
    assert isinstance(dataset, CocoDetection) and dataset[0][0].shape[0] == 3  # opened where the file said
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]))
    args = ["eval", "--detections", str(dets), "--dataset", "coco", "--data", str(voc), "--split", "test",
            "--annotations", str(path), "--project", str(tmp_path / "runs")]
    one_line(runner.invoke(app, args), "outside.json")
    assert runner.invoke(app, [*args, "--allow-outside-root"]).exit_code == 0
    with pytest.raises(DataError, match="trainval.txt:2: path '../000001' leads outside"):
        root = Path(shutil.copytree(voc, tmp_path / "voc"))
        (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n../000001\n")
        VocDetection(root, "trainval")


def test_random_bytes_are_not_a_pytorch_checkpoint(tmp_path):
    """Random bytes mostly start with a byte the safe unpickler refuses ("Weights only load failed"),
    which was reported as "holds pickled Python objects"."""
    path = tmp_path / "random.pt"
    for seed in range(20):
        path.write_bytes(random.Random(seed).randbytes(2048))
        if path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
            continue  # a pickle header by chance: not "random bytes" for this test
        with pytest.raises(CheckpointError, match=r"random\.pt: is not a PyTorch checkpoint \(it starts with bytes"):
            checkpoint.read(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        checkpoint.read(path)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, toy_detector):
    loader = DataLoader([], batch_size=1, collate_fn=collate)
    trainer = Trainer(toy_detector, Recipe(), loader, torch.optim.SGD(toy_detector.model.parameters(), lr=0.1), 5)
    hook = CheckpointHook(tmp_path / "last.pt", 1, lambda t: {"model": dict(t.student.model.state_dict()),
                                                               "iteration": torch.tensor(t.iteration)})
    trainer.iteration = trainer.global_step = 1
    hook.save(trainer)
    with torch.no_grad():
        toy_detector.model.backbone.body.conv1.weight[0, 0, 0, 0] = math.inf
    trainer.iteration = trainer.global_step = 2
    with pytest.raises(NonFiniteWeights, match=r"non-finite weights at iteration 2 \(1 tensor\(s\), first "
                                                r"backbone\.body\.conv1\.weight\); not saved over .*last\.pt"):
        hook.save(trainer)
    kept = checkpoint.read(tmp_path / "last.pt")
    assert kept["iteration"].item() == 1 and checkpoint.non_finite(kept["model"]) == []
    assert hook.saved_iteration == 1


def test_the_non_finite_stop_keeps_the_last_finite_last_pt(tmp_path, teacher):
    """SGD at lr 1e-3, multiplied by 1e41 at the milestone 0.25 epoch (16 images / batch 2 = 8 per
    epoch: iteration 2): the step of iteration 2 throws the weights to ~1e38, still finite, saved as
    iteration 3; the loss of iteration 3 is NaN and the run stops with last.pt at iteration 3."""
    result = runner.invoke(app, binarize(
        "--teacher", str(teacher), "--project", str(tmp_path), "--name", "nan", "--set", "train.max_iterations=6",
        "--set", "train.clip_grad=null", "--set", "train.optimizer={name: sgd, lr: 1.0e-3, momentum: 0.0, weight_decay: 0.0}",
        "--set", "train.schedule={name: step, warmup_iters: 0, milestones: [0.25], gamma: 1.0e+41}"))
    last = tmp_path / "binarize" / "nan" / "weights" / "last.pt"
    one_line(result, "non-finite loss at iteration 3: task/loss_classifier=nan",
             f"{last} keeps iteration 3, the last with finite weights")
    kept = checkpoint.read(last)
    assert kept["trainer"]["iteration"] == 3 and checkpoint.non_finite(kept["model"]) == []


def test_metrics_jsonl_is_strict_json(tmp_path, toy_detector):
    logger = MetricsLogger(tmp_path / "metrics.jsonl", tmp_path / "results.csv", 1)
    loader = DataLoader([], batch_size=1, collate_fn=collate)
    trainer = Trainer(toy_detector, Recipe(), loader, torch.optim.SGD(toy_detector.model.parameters(), lr=0.1), 5)
    logger.log_eval(trainer, {"voc07/mAP50": math.nan, "voc07/AP_cat": math.inf, "voc07/AP_dog": 0.5})

    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in metrics.jsonl")

    record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert record == {"iteration": 0, "epoch": 0, "voc07/mAP50": None, "voc07/AP_cat": None, "voc07/AP_dog": 0.5}


def test_exist_ok_moves_old_history_aside_and_removes_stale_temporaries(tmp_path, teacher):
    """A new run in an existing folder: the old metrics.jsonl/results.csv survive as *.1.*, the new
    run's files start fresh, a log line says so; a temporary file of a killed checkpoint write
    (save_atomic's own name pattern) is deleted, a user's file that only looks similar is kept.
    The project folder's name looks like rich markup; the summary prints it as it is."""
    project = tmp_path / "[bold]runs" / "[" / "old]"
    folder = project / "binarize" / "again"
    (folder / "weights").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"iteration": 99, "old": true}\n')
    (folder / "results.csv").write_text("iteration,old\n99,1\n")
    fd, stale = tempfile.mkstemp(prefix=".last.pt.", dir=folder / "weights")  # what a SIGKILL mid-save leaves
    os.close(fd)
    (folder / "weights" / "notes.last.pt.txt").write_text("mine")
    result = runner.invoke(app, binarize("--teacher", str(teacher), "--project", str(project), "--name", "again",
                                         "--exist-ok", "--set", "train.max_iterations=1", "--set", "eval.max_images=2"))
    assert result.exit_code == 0, (result.exception, result.stderr)
    assert str(folder) in result.stdout
    assert (folder / "metrics.1.jsonl").read_text() == '{"iteration": 99, "old": true}\n'
    assert (folder / "results.1.csv").read_text() == "iteration,old\n99,1\n"
    fresh = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert fresh and not any(r.get("old") for r in fresh) and max(r["iteration"] for r in fresh) == 1
    assert (folder / "results.csv").read_text().startswith("iteration,")
    assert "starts a fresh metrics.jsonl; the previous one is now metrics.1.jsonl" in result.stderr
    assert not Path(stale).exists() and (folder / "weights" / "notes.last.pt.txt").read_text() == "mine"
    assert "removed 1 temporary file(s) of an interrupted checkpoint write" in result.stderr


def test_remove_stale_temps_touches_only_save_atomic_names(tmp_path):
    names = [".last.pt.a1b2c3d4", ".best.pt.zz_9zz_9", ".last.pt.short", ".last.pt.A1B2C3D4", "last.pt", ".notes.txt",
             ".last.pt.a1b2c3d4e"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = checkpoint.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".best.pt.zz_9zz_9", ".last.pt.a1b2c3d4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {".best.pt.zz_9zz_9", ".last.pt.a1b2c3d4"})


def test_annotations_are_all_parsed_before_inference(tmp_path, voc, teacher):
    """The last of the 3 test annotations is malformed: eval fails naming it before one image is predicted."""
    root = Path(shutil.copytree(voc, tmp_path / "voc"))
    xml = root / "Annotations" / "000007.xml"
    xml.write_text(xml.read_text().replace("<xmin>", "<xmin>oops", 1))
    dataset = VocDetection(root, "test")
    predicted: list[int] = []
    with pytest.raises(DataError, match=r"000007\.xml: <xmin> is 'oops"):
        scoring.score_models([teacher], dataset, "voc07", len(dataset), 1, torch.device("cpu"), predicted.append)
    assert predicted == [], "images were predicted before the bad annotation was found"
    one_line(runner.invoke(app, ["eval", str(teacher), "--dataset", "synthetic", "--data", str(root), "--batch-size",
                                 "1", "--project", str(tmp_path / "runs")]), "000007.xml")
    assert not (tmp_path / "runs" / "eval" / "exp").exists()


# --- the README's "never downloaded or executed" -----------------------------------------------------------

def test_no_architecture_downloads_anything(tmp_path, monkeypatch):
    """Every torchvision-family architecture is built (tiny widths, the same builders) with the network
    refused and an empty TORCH_HOME: nothing connects and nothing lands in the weights cache."""
    import socket

    from detbin.models.config import tiny_config
    from detbin.models.families import all_archs

    attempts: list[object] = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    built = [arch for arch in all_archs() if not arch.startswith("detectron2")]
    for arch in built:
        assert sum(p.numel() for p in build_detector(tiny_config(arch)).model.parameters()) > 0
    assert len(built) >= 8 and attempts == [] and not (tmp_path / "torch_home").exists()


def test_a_recipe_file_cannot_run_code(tmp_path):
    """YAML is loaded with a safe loader: a python/object tag is an error, never a call."""
    marker = tmp_path / "YAML_RAN"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(Path(SMOKE).read_text() + f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    one_line(runner.invoke(app, binarize("--teacher", "t.pt", "--config", str(recipe))), "evil.yaml: invalid YAML",
             "python/object/apply:os.system")
    assert not marker.exists()
