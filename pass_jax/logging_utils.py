"""Where numbers go: clu metric writers to TensorBoard, and one progress line on the console.

Only process 0 writes anything (files or console); the other processes get a writer that drops
everything, so a multi-host run produces one TensorBoard run and one log, not N interleaved ones.
"""
import sys
import time
from typing import Mapping

import jax
import numpy as np
from clu import metric_writers


def _fmt_seconds(s: float) -> str:
  s = int(max(s, 0))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:d}:{sec:02d}"


def _fmt_value(v: float) -> str:
  return f"{v:.4g}"


class MetricLogger:
  """Scalars to `logdir` (TensorBoard) and a console line `[stage] step s/T | loss .. | it/s | ETA`.

  `start_step` is the step a resumed run starts from, so speed and ETA only count steps this
  process actually ran.
  """

  def __init__(self, logdir: str | None, *, stage: str, total_steps: int, start_step: int = 0,
               quiet: bool = False, stream=None):
    self.stage = stage
    self.total_steps = int(total_steps)
    self.is_writer = jax.process_index() == 0
    self.quiet = quiet or not self.is_writer
    self.stream = stream or sys.stdout
    if self.is_writer and logdir:
      # Synchronous on purpose: a run killed with SIGKILL keeps everything written so far.
      self.writer = metric_writers.SummaryWriter(str(logdir))
    else:
      self.writer = metric_writers.MultiWriter([])  # writes to nobody
    self._t0 = time.perf_counter()
    self._step0 = int(start_step)

  def write(self, step: int, scalars: Mapping[str, float], *, prefix: str,
            progress: bool = False, console: tuple[str, ...] | None = None) -> None:
    """Writes all `prefix/name` scalars at `step` to TensorBoard and prints those named in
    `console` (all when None); `progress` adds speed and ETA to the printed line."""
    values = {f"{prefix}/{k}": float(np.asarray(v)) for k, v in scalars.items()}
    self.writer.write_scalars(int(step), values)
    self.writer.flush()
    if not self.quiet:
      shown = {f"{prefix}/{k}": values[f"{prefix}/{k}"] for k in (console or scalars)
               if k in scalars}
      self.print(self.line(step, shown, progress=progress))

  def line(self, step: int, values: Mapping[str, float], *, progress: bool) -> str:
    parts = [f"[{self.stage}] step {int(step)}/{self.total_steps}"]
    parts += [f"{k} {_fmt_value(v)}" for k, v in values.items()]
    if progress:
      elapsed = time.perf_counter() - self._t0
      done = int(step) - self._step0
      rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
      parts.append(f"{rate:.2f} steps/s")
      parts.append(f"ETA {_fmt_seconds((self.total_steps - int(step)) / rate) if rate else '?'}")
    return " | ".join(parts)

  def print(self, line: str) -> None:
    if not self.quiet:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
