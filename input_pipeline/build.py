"""Builds the tokenized dataset: extraction -> splits -> vocabulary -> tfds shards.

  python -m input_pipeline.build DATA_ROOT --out DIR [--split flow|capture|given]
      [--split-file CSV] [--label-fraction F] [--seed S] [--workers N]
      [--labels CSV] [--config configs/pass.py:tiny] [--set key=value ...]
      [--beam-runner DirectRunner|DataflowRunner|... --beam-option=--flag=v ...]

Writes DIR/extract_report.json, DIR/splits.json, DIR/vocab.txt and the tfds
dataset DIR/tfds/pass_flows/1.0.0. `build_dataset(config.data, root, out)`
does the same from Python (pass_jax/main.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import json
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from input_pipeline import splits as splits_lib
from input_pipeline import tfds_builder
from input_pipeline import vocab as vocab_lib
from input_pipeline.records import FlowRecord


class BuildError(ValueError):
  """The dataset cannot be built from what was given (no flows, no classes, ...)."""


@dataclasses.dataclass
class BuildResult:
  out_dir: pathlib.Path
  tfds_dir: pathlib.Path          # the version dir: tfds.builder_from_directory(tfds_dir)
  vocab_path: pathlib.Path
  splits_path: pathlib.Path
  report_path: pathlib.Path
  class_names: list[str]
  split_sizes: dict[str, int]
  vocab_size: int
  seq_len: int
  notes: list[str]

  def summary(self) -> str:
    sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
    lines = [f"dataset written to {self.out_dir}",
             f"  classes: {len(self.class_names)}; flows: {sizes}",
             f"  vocabulary: {self.vocab_size} tokens ({self.vocab_path}); sequence length "
             f"{self.seq_len}",
             f"  splits: {self.splits_path}; extraction report: {self.report_path}",
             "load it with:",
             f"  tfds.builder_from_directory('{self.tfds_dir}').as_dataset(split='train')",
             f"  tfds.load('pass_flows', data_dir='{self.out_dir / 'tfds'}')  "
             "# after `import input_pipeline.tfds_builder`",
             f"  input_pipeline.tfds_builder.load_split_arrays('{self.out_dir}', 'train')"]
    lines += [f"note: {n}" for n in self.notes]
    return "\n".join(lines)


def tokenize_splits(flows: Sequence[FlowRecord], splits: splits_lib.Splits,
                    vocab: vocab_lib.Vocab) -> dict[str, dict[str, np.ndarray]]:
  """split -> the contract's dataset dict, rows in splits.json order."""
  tokens = vocab.encode_batch(flows)            # one vectorised pass over all flows
  comm_keys = np.array([f.comm_key for f in flows], dtype=str)
  out = {}
  for s in splits_lib.SPLITS:
    idx = splits.index[s]
    out[s] = {"tokens": tokens[idx], "label": splits.label[s], "hidden_label":
              splits.hidden_label[s], "flow_id": splits.flow_id[s],
              "comm_key": comm_keys[idx] if len(idx) else np.zeros(0, str),
              "capture": splits.capture[s]}
  return out


def training_flows(flows: Sequence[FlowRecord], splits: splits_lib.Splits) -> list[FlowRecord]:
  """The flows the vocabulary may see: train and the unlabeled pool, never val/test."""
  idx = np.concatenate([splits.index["train"], splits.index["unlabeled"]])
  return [flows[i] for i in np.sort(idx)]


def write_build(flows: Sequence[FlowRecord], report: dict, data_cfg, out_dir, *,
                flow_source=None, beam_runner: str | None = None,
                beam_options: Sequence[str] = ()) -> BuildResult:
  """Splits, vocabulary and tfds shards of already extracted flows.

  With `beam_runner`, the shards are written by a Beam pipeline that re-reads
  each capture through `flow_source(capture) -> list[FlowRecord]`.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if not flows:
    raise BuildError("no flows were extracted; check the data root and filters")
  splits = splits_lib.splits_from_config(flows, data_cfg)
  if not splits.class_names:
    raise BuildError("no labelled flows: give labels (labels.csv or class folders)")
  if not len(splits.index["train"]):
    raise BuildError("the training split is empty")
  vocab = vocab_lib.Vocab.from_config(training_flows(flows, splits), data_cfg)
  report_path, splits_path, vocab_path = (out_dir / "extract_report.json",
                                          out_dir / "splits.json", out_dir / "vocab.txt")
  report_path.write_text(json.dumps(report, indent=1, default=str))
  splits.save(splits_path)
  vocab.save(vocab_path)
  sizes = {s: int(len(splits.index[s])) for s in splits_lib.SPLITS}
  metadata = {"vocab": tfds_builder.vocab_metadata(vocab), "class_names": splits.class_names,
              "split_method": splits.method, "split_sizes": sizes, "notes": splits.notes,
              "report": json.loads(report_path.read_text())}
  if beam_runner:
    table = {}
    for s in splits_lib.SPLITS:
      for row, (fid, lab, hid) in enumerate(zip(splits.flow_id[s].tolist(),
                                                splits.label[s].tolist(),
                                                splits.hidden_label[s].tolist())):
        table[fid] = (s, row, lab, hid)
    captures = sorted({c for s in splits_lib.SPLITS for c in splits.capture[s].tolist()})
    tfds_dir = tfds_builder.write_tfds_beam(
        out_dir, captures=captures, table=table, vocab=vocab, flow_source=flow_source,
        metadata=metadata, beam_runner=beam_runner, beam_options=beam_options)
  else:
    tfds_dir = tfds_builder.write_tfds(out_dir, tokenize_splits(flows, splits, vocab), metadata)
  return BuildResult(out_dir, tfds_dir, vocab_path, splits_path, report_path,
                     splits.class_names, sizes, vocab.size, vocab.seq_len, splits.notes)


def build_dataset(data_cfg, root, out_dir, workers: int = 0, *,
                  beam_runner: str | None = None,
                  beam_options: Sequence[str] = ()) -> BuildResult:
  """Extracts flows under `root` (config.data) and writes the dataset to out_dir."""
  from input_pipeline import extract, flows as flows_lib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  if not root.exists():
    raise FileNotFoundError(f"data root not found: {root}")
  flow_cfg = flows_lib.FlowConfig.from_config(data_cfg)
  flows, report = extract.extract_dataset(
      str(root), labels_csv=data_cfg.labels_csv or None, flow_cfg=flow_cfg,
      min_payload_bytes=data_cfg.min_payload_bytes, tls_only=data_cfg.tls_only,
      min_flows_per_class=data_cfg.min_flows_per_class, workers=workers or data_cfg.workers)
  flow_source = functools.partial(tfds_builder.read_capture_flows, str(root), flow_cfg)
  return write_build(flows, report, data_cfg, out_dir, flow_source=flow_source,
                     beam_runner=beam_runner, beam_options=beam_options)


# ------------------------------------------------------------------------- CLI
def load_config(spec: str):
  """`path/to/file.py[:arg]` -> the file's get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"config file not found: {path}")
  module_spec = importlib.util.spec_from_file_location("_build_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _set(data_cfg, assignment: str) -> None:
  key, sep, text = assignment.partition("=")
  key = key.removeprefix("data.")
  if not sep or key not in data_cfg:
    raise ValueError(f"--set expects data.<field>=<value> with a known field, got "
                     f"{assignment!r}")
  current = data_cfg[key]
  if isinstance(current, bool):
    value: Any = text.lower() in ("1", "true", "yes")
  elif isinstance(current, (int, float, str)):
    value = type(current)(text)
  else:
    value = tuple(float(v) for v in text.split(","))
  data_cfg[key] = value


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m input_pipeline.build",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("root", help="dataset root: folder of captures / class folders")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--split", choices=splits_lib.METHODS)
  parser.add_argument("--split-file", help="CSV of pcap,split rows (with --split given)")
  parser.add_argument("--label-fraction", type=float)
  parser.add_argument("--seed", type=int)
  parser.add_argument("--workers", type=int, default=None)
  parser.add_argument("--labels", help="labels CSV (default: ROOT/labels.csv or folders)")
  parser.add_argument("--config", default="", help="config file[:variant], e.g. "
                      "configs/pass.py:tiny (default: the built-in data config)")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a config.data field, e.g. --set payload_bytes=64")
  parser.add_argument("--beam-runner", help="write shards with Apache Beam on this runner")
  parser.add_argument("--beam-option", action="append", default=[],
                      help="pipeline option for the Beam runner, e.g. --beam-option=--project=p")
  args = parser.parse_args(argv)
  try:
    if args.config:
      data_cfg = load_config(args.config).data
    else:
      data_cfg = importlib.import_module("configs.pass").data_config()
    for name, value in (("split", args.split), ("split_file", args.split_file),
                        ("label_fraction", args.label_fraction), ("seed", args.seed),
                        ("labels_csv", args.labels), ("workers", args.workers)):
      if value is not None:
        data_cfg[name] = value
    for assignment in args.set:
      _set(data_cfg, assignment)
    result = build_dataset(data_cfg, args.root, args.out, workers=data_cfg.workers,
                           beam_runner=args.beam_runner, beam_options=args.beam_option)
  except (ValueError, OSError, ImportError) as e:   # named, readable, no traceback
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  print(result.summary())
  return 0


if __name__ == "__main__":
  sys.exit(main())
