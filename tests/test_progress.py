"""Training progress: a rich bar on a terminal, plain log lines without one (README promise)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from detbin.config import recipes_dir

SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")


def _train(tmp_path, name: str, terminal: bool) -> str:
    command = [sys.executable, "-m", "detbin", "train", "--config", SMOKE, "--set", "recipe=null",
               "--set", "train.max_iterations=3", "--project", str(tmp_path), "--name", name]
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"COLUMNS": "120", "TERM": "xterm"}
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env, cwd=tmp_path)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_rich_bar_and_a_pipe_gets_plain_lines(tmp_path):
    plain = _train(tmp_path, "plain", terminal=False)
    assert ": 3/3 (100%) loss" in plain and "ETA 0:00" in plain and "\x1b[" not in plain  # plain lines, no escapes
    shown = _train(tmp_path, "tty", terminal=True)
    assert "3/3" in shown and "━" in shown and "\x1b[" in shown  # rich's bar, redrawn in place
    assert "(100%) loss" not in shown
