"""JSON files the runs leave behind (markers, states, results): read, and written atomically.

Kept free of JAX/TF imports at module level so light tools (the experiment runner, reports) can
use it; `process0_only` asks JAX which process this is only when it is set.
"""
from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def read_json_or_none(path: str) -> Any:
  """The file's content, or None when it does not exist."""
  return read_json(path) if os.path.isfile(path) else None


def write_json(path: str, obj: Any, *, process0_only: bool = False) -> None:
  """Writes via a temporary file, so a reader (or a killed run) never sees half a file.

  process0_only: in a multi-process run only process 0 writes (the workdir is shared).
  """
  if process0_only:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() != 0:
      return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)
