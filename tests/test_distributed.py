"""torchrun with 2 CPU processes (gloo): identical weights on both ranks and one run folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from detbin.config import recipes_dir

SCRIPT = """
import os, sys, torch
from pathlib import Path
from detbin import config
from detbin.app.runner import RunOptions, run

out = Path(sys.argv[1])
cfg, raw = config.load(sys.argv[2], ["train.max_iterations=3", "train.batch_size=2", "data.train.size=8",
                                     "eval.max_images=4"])
result = run(cfg, raw, RunOptions(verb="binarize", project=out / "runs", name="ddp", source=sys.argv[2]))
rank = int(os.environ["RANK"])
torch.save(result.student.model.state_dict(), out / f"rank{rank}.pt")
(out / f"rank{rank}.txt").write_text(f"{os.environ['WORLD_SIZE']} {result.directory}")
"""


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    smoke = recipes_dir() / "smoke" / "tiny_synthetic.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), str(smoke)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    world0, directory0 = (tmp_path / "rank0.txt").read_text().split()
    world1, directory1 = (tmp_path / "rank1.txt").read_text().split()
    assert (world0, world1) == ("2", "2")
    assert directory1 == "None", "only rank 0 writes a run folder"
    assert [p.name for p in (tmp_path / "runs" / "binarize").iterdir()] == ["ddp"]
    assert (Path(directory0) / "weights" / "last.pt").is_file()
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    start = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert any(v.is_floating_point() for v in start.values())
