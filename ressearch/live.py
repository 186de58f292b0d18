"""Progress of a running study: a live view on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import optuna
from optuna.trial import TrialState


def _front_lines(study: optuna.Study, limit: int = 8) -> list[str]:
    try:
        front = [t for t in study.best_trials if not t.user_attrs.get("infeasible")]
    except (RuntimeError, ValueError):
        return []
    front.sort(key=lambda t: t.values[1])
    lines = []
    for t in front[:limit]:
        test = t.user_attrs.get("test_accuracy")
        test_text = f" test {100 * test:.2f}%" if test is not None else ""
        lines.append(f"  #{t.number:<4} {int(t.values[1]):>7,} params  "
                     f"{100 * t.values[0]:.2f}%{test_text}  {t.user_attrs.get('short', '')}")
    return lines


class LiveView:
    """Shows trials done / running / pruned / failed, elapsed time and the current Pareto front.

    Args:
        stream: Where to write (default stderr).
        interactive: Redraw a block in place (default: when ``stream`` is a terminal); otherwise
            each event is one log line, and a summary line follows every finished trial.
    """

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.study: optuna.Study | None = None
        self.trials = 0
        self.started = time.time()
        self.drawn = 0
        self.last_draw = 0.0

    def start(self, study: optuna.Study, trials: int) -> None:
        """Begin showing ``study``, which should reach ``trials`` finished trials."""
        self.study, self.trials, self.started = study, trials, time.time()
        self.refresh(force=True)

    def status(self) -> str:
        """One line of counts and elapsed time."""
        assert self.study is not None
        states = [t.state for t in self.study.get_trials(deepcopy=False)]
        n = {s: states.count(s) for s in TrialState}
        elapsed = time.time() - self.started
        return (f"[{elapsed // 60:.0f}m{elapsed % 60:02.0f}s] {n[TrialState.COMPLETE]} complete, "
                f"{n[TrialState.PRUNED]} pruned, {n[TrialState.FAIL]} failed, "
                f"{n[TrialState.RUNNING]} running (of {self.trials})")

    def event(self, message: str) -> None:
        """Something happened to one trial."""
        self._clear()
        print(message, file=self.stream, flush=True)
        if not self.interactive and self.study is not None and (
                "complete" in message or "pruned" in message or "FAILED" in message):
            print(self.status(), file=self.stream, flush=True)
        self.drawn = 0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Redraw the live block (terminal only; at most once a second unless forced)."""
        if not self.interactive or self.study is None:
            return
        if not force and time.time() - self.last_draw < 1.0:
            return
        self._clear()
        lines = [self.status(), "Pareto front (accuracy up, parameters down):"]
        lines += _front_lines(self.study) or ["  (no finished trial yet)"]
        print("\n".join(lines), file=self.stream, flush=True)
        self.drawn, self.last_draw = len(lines), time.time()

    def stop(self) -> None:
        """Leave the final block on screen; print the front when not interactive."""
        if self.study is None:
            return
        if not self.interactive:
            print(self.status(), file=self.stream)
            print("Pareto front (accuracy up, parameters down):", file=self.stream)
            print("\n".join(_front_lines(self.study, limit=50)), file=self.stream, flush=True)
        else:
            self.refresh(force=True)
        self.drawn = 0

    def _clear(self) -> None:
        if self.interactive and self.drawn:
            # Move up over the block and clear to the end of the screen.
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0
