r"""Classifies the TCP flows of new captures with a finished run's model.

  python -m pass_jax.classify --workdir=W --pcaps=PATH [--output=preds.csv] [--min-confidence=0.5]

PATH is a capture file or a folder of them. Reuses the run's own pieces: pcap -> flows (same flow
settings), the run's vocabulary, the kept checkpoint (best PLI round, else M0), the sharded
predict step over every local device. Writes one CSV row per flow: capture, five-tuple, first
timestamp, predicted class (`unknown` below --min-confidence), confidence, top-3 classes.
Unreadable files are reported as the extraction stage does and the rest is classified.
"""
import csv
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished pass_jax run (python -m pass_jax.main).")
_PCAPS = flags.DEFINE_string("pcaps", None, "A capture file or a folder of captures.")
_OUTPUT = flags.DEFINE_string("output", "predictions.csv", "Where the CSV of predictions goes.")
_MIN_CONFIDENCE = flags.DEFINE_float("min_confidence", 0.0,
                                     "Below this top-class probability the flow is `unknown`.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Extraction worker processes (0: all cores).")
flags.mark_flags_as_required(["workdir", "pcaps"])

CSV_FIELDS = ("capture", "client_ip", "client_port", "server_ip", "server_port", "protocol",
              "first_ts", "predicted", "confidence", "top3")


class ClassifyError(RuntimeError):
  """Classification cannot start; the message says why."""


def load_run(workdir: str):
  """(config, Data, checkpoint dir) of a finished run, checked for consistency."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from pass_jax import checkpoint, run_report  # pylint: disable=g-import-not-at-top
  from pass_jax.trainers import evaluate  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise ClassifyError(f"{workdir} is not a pass_jax run (no config.json); give the --workdir "
                        "of a finished `python -m pass_jax.main` run")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  data_dir = config.data.get("prebuilt") or os.path.join(workdir, "data")
  if not os.path.isfile(os.path.join(data_dir, "vocab.txt")):
    raise ClassifyError(f"{workdir} has no vocabulary ({data_dir}/vocab.txt): its build stage "
                        "never finished")
  data = evaluate.Data.from_dir(data_dir)
  ckpt_dir = run_report.kept_checkpoint_dir(config, workdir)
  if not os.path.isdir(ckpt_dir):
    raise ClassifyError(f"{workdir} has no trained model ({ckpt_dir}): run the finetune stage")
  with checkpoint.Checkpointer(ckpt_dir) as ckpt:
    if ckpt.latest_step() is None:
      raise ClassifyError(f"{ckpt_dir} holds no checkpoint")
    meta = ckpt.restore_meta()
  saved_vocab = (meta.get("vocab") or {}).get("sha256")
  vocab_now = checkpoint.file_reference(os.path.join(data_dir, "vocab.txt"))["sha256"]
  if saved_vocab and saved_vocab != vocab_now:
    raise ClassifyError(f"the vocabulary in {data_dir} is not the one the checkpoint in {ckpt_dir}"
                        " was trained with (sha256 differs); rebuild or restore the run's data")
  return config, data, ckpt_dir


def classify(workdir: str, pcaps: str, *, min_confidence: float = 0.0, workers: int = 0,
             log=print) -> tuple[list[dict], dict]:
  """(one row per flow, extraction report). Raises ClassifyError when nothing can be done."""
  from input_pipeline import extract, flows as flows_lib, vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from pass_jax import sharding  # pylint: disable=g-import-not-at-top
  from pass_jax.trainers import evaluate  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  if not os.path.exists(pcaps):
    raise ClassifyError(f"capture path not found: {pcaps}")
  config, data, ckpt_dir = load_run(workdir)
  vocab = vocab_lib.Vocab.load(os.path.join(data.data_dir, "vocab.txt"))

  start = time.time()
  try:
    flows, report = extract.extract_dataset(
        pcaps, flow_cfg=flows_lib.FlowConfig.from_config(config.data), min_payload_bytes=0,
        min_flows_per_class=0, workers=workers)
  except Exception as e:  # labels/plan errors name the file; no traceback for the user
    raise ClassifyError(f"cannot read {pcaps}: {e}") from e
  for failed in report.get("files_failed", []):
    log(f"[classify] skipped {failed['file']}: {failed['reason']}")
  if not flows:
    raise ClassifyError(f"no TCP flow found in {pcaps} ({report.get('files_ok', 0)} readable "
                        "files)")
  log(f"[classify] {len(flows)} flows from {report.get('files_ok', 0)} files in "
      f"{time.time() - start:.1f}s")

  mesh = sharding.make_mesh(__import__("jax").local_devices())
  try:
    state, _ = evaluate.restore_classifier(config, ckpt_dir, mesh=mesh,
                                           num_classes=data.num_classes,
                                           vocab_size=data.vocab_size, seq_len=data.seq_len)
  except Exception as e:  # shape/tree mismatch: the checkpoint is not this config's model
    raise ClassifyError(f"the checkpoint in {ckpt_dir} does not fit the model of "
                        f"{workdir}/config.json ({type(e).__name__}: {str(e)[:200]})") from e
  start = time.time()
  tokens = vocab.encode_batch(flows)
  probs = evaluate.predict_arrays(state, {"tokens": tokens}, config, mesh)["probs"]
  seconds = time.time() - start
  log(f"[classify] predicted {len(flows)} flows in {seconds:.1f}s "
      f"({len(flows) / max(seconds, 1e-9):,.0f} flows/s on {mesh.size} devices)")

  names = data.class_names
  top3 = np.argsort(-probs, axis=-1)[:, :3]
  rows = []
  for flow, p, best3 in zip(flows, probs, top3):
    conf = float(p[best3[0]])
    rows.append({"capture": flow.capture, "client_ip": flow.client_ip,
                 "client_port": flow.client_port, "server_ip": flow.server_ip,
                 "server_port": flow.server_port, "protocol": "tcp",
                 "first_ts": f"{flow.first_ts:.6f}",
                 "predicted": names[best3[0]] if conf >= min_confidence else "unknown",
                 "confidence": f"{conf:.4f}",
                 "top3": ";".join(f"{names[c]}:{p[c]:.4f}" for c in best3)})
  return rows, report


def write_csv(rows: list[dict], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    rows, _ = classify(_WORKDIR.value, _PCAPS.value, min_confidence=_MIN_CONFIDENCE.value,
                       workers=_WORKERS.value)
  except ClassifyError as e:
    print(f"pass_jax.classify: {e}", file=sys.stderr)
    return 1
  write_csv(rows, _OUTPUT.value)
  print(f"[classify] wrote {len(rows)} rows to {_OUTPUT.value}")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
