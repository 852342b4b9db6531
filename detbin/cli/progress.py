"""Training progress: a rich bar on a terminal, plain lines through a pipe, both with ETA and the last score."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from detbin.cli.common import err, interactive

__all__ = ["make_progress_hook", "clock"]


def clock(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _last_score(trainer: Any) -> str:
    """``"val voc07/mAP50 0.5312 @600"`` from the trainer's evaluation hook, or ``""`` before the first."""
    for hook in trainer.hooks:
        history = getattr(hook, "history", None)
        if history and getattr(hook, "metric", None):
            last = history[-1]
            value = last.get(hook.metric)
            return "" if value is None else f"{hook.metric} {value:.4f} @{last['iteration']}"
    return ""


def make_progress_hook(title: str, no_progress: bool, lines: int = 20) -> Any:
    """A trainer hook: a rich bar on a terminal; else ``lines`` plain lines per run, each with the ETA.

    Args:
        title: the stage, e.g. ``"[2/4] teacher (real-valued)"``.
        lines: how many plain lines a whole run prints (one every 1/lines of it, and the last).
    """
    from detbin.training.hook import Hook

    class ProgressHook(Hook):
        def __init__(self) -> None:
            self.bar: Progress | None = None
            self.task: Any = None
            self.started, self.first = time.perf_counter(), 0

        def before_train(self, trainer: Any) -> None:
            self.started, self.first = time.perf_counter(), trainer.iteration
            if interactive(no_progress):
                self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=err, transient=False)
                self.bar.start()
                self.task = self.bar.add_task(title, total=trainer.max_iterations, completed=trainer.iteration,
                                              status="")

        def after_step(self, trainer: Any) -> None:
            last = trainer.last
            loss = f"loss {last.total:.3f}" if last.student else f"phase {last.phase}"
            score = _last_score(trainer)
            status = f"{loss} lr {last.lr:.2e} {last.seconds:.2f}s/it" + (f" {score}" if score else "")
            if self.bar is not None:
                self.bar.update(self.task, completed=trainer.iteration, status=status)
                return
            every = max(1, trainer.max_iterations // lines)
            if last.student and (trainer.iteration % every == 0 or trainer.iteration == trainer.max_iterations):
                elapsed = time.perf_counter() - self.started
                done = max(1, trainer.iteration - self.first)
                eta = elapsed / done * (trainer.max_iterations - trainer.iteration)
                share = trainer.iteration / trainer.max_iterations
                err.print(Text(f"{title}: {trainer.iteration}/{trainer.max_iterations} ({share:.0%}) {status}, "
                               f"elapsed {clock(elapsed)}, ETA {clock(eta)}"), soft_wrap=True)

        def after_train(self, trainer: Any) -> None:
            if self.bar is not None:
                self.bar.stop()

    return ProgressHook()
