r"""Runs the PASS pipeline (or one stage of it) from a config.

  python -m pass_jax.main --config=configs/pass.py:tiny --workdir=runs/demo \
      [--config.data.root=DIR] [--config.stage=pretrain] [--config.x.y=v ...]

Multi-host: set PASS_COORDINATOR (host:port), PASS_NUM_PROCESSES, PASS_PROCESS_ID (or the flags of
the same names); on Slurm and Cloud TPU pods `jax.distributed.initialize()` finds its peers by itself
(PASS_DISTRIBUTED=auto). See docs/launch.md.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pass.py:tiny.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where everything of this run is written.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("PASS_COORDINATOR"),
                                   "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", int(os.environ.get("PASS_NUM_PROCESSES", "0")),
                                      "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("PASS_PROCESS_ID", "0")),
                                   "Index of this process in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  """Joins the other processes of a multi-host run, when there are any."""
  import jax  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value or None,
                               process_id=_PROCESS_ID.value)
  elif os.environ.get("PASS_DISTRIBUTED") == "auto":
    jax.distributed.initialize()  # Slurm / Cloud TPU: peers come from the environment.


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    # Orbax and tfds log every file they touch at INFO; our own progress lines go to stdout.
    logging.set_verbosity(logging.WARNING)
  from pass_jax import config_check  # pylint: disable=g-import-not-at-top
  from pass_jax import pipeline  # pylint: disable=g-import-not-at-top
  try:
    config_check.validate(_CONFIG.value)
    config_check.absolute_paths(_CONFIG.value)
  except config_check.ConfigError as e:
    print(f"pass_jax: invalid config: {e}", file=sys.stderr)
    return 2
  _initialize_distributed()
  try:
    pipeline.run(_CONFIG.value, os.path.abspath(_WORKDIR.value))
  except pipeline.PipelineError as e:
    print(f"pass_jax: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
