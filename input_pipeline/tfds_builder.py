"""Token rows -> a tfds dataset (TFRecord shards), locally or under Apache Beam.

Layout under a build directory D (see input_pipeline/build.py):
  D/tfds/pass_flows/1.0.0/   shards, dataset_info.json, features.json and
                             metadata.json (vocabulary, class names, report)
Load it with `tfds.builder_from_directory(D/tfds/pass_flows/1.0.0)`, with
`tfds.load('pass_flows', data_dir=D/tfds)` after importing this module, or
as numpy arrays with `load_split_arrays(D, split)`.

Rows keep the order of splits.json (shuffling is disabled on write), so
`index` in eval batches maps back to flow ids. Empty splits are not written;
`load_split_arrays` returns empty arrays for them.

The Beam builder re-reads the capture files on the workers (one capture per
element) and tokenizes them with the vocabulary and split table computed by
the local pass; see docs/design/tokens.md for the runner commands.
"""
from __future__ import annotations

import functools
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import vocab as vocab_lib
from input_pipeline.records import FlowRecord
from input_pipeline.splits import SPLITS

NAME = "pass_flows"
DATASET_VERSION = "1.0.0"
STRING_FIELDS = ("flow_id", "comm_key", "capture")


def _features() -> tfds.features.FeaturesDict:
  # Token rows have a fixed length per build, but m and n vary between builds
  # (the sensitivity study), so the stored shape is (None,).
  return tfds.features.FeaturesDict({
      "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "label": tfds.features.Tensor(shape=(), dtype=np.int32),
      "hidden_label": tfds.features.Tensor(shape=(), dtype=np.int32),
      "flow_id": tfds.features.Text(),
      "comm_key": tfds.features.Text(),
      "capture": tfds.features.Text(),
  })


class PassFlows(tfds.core.GeneratorBasedBuilder):
  """Tokenized PASS flows with train / validation / test / unlabeled splits."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: "Token rows [CLS]+RP+[SEP]+PL with labels and flow ids."}
  # tfds derives this from the module through `importlib_resources`, which it
  # does not install on Python >= 3.9; naming the file avoids that lookup.
  code_path = epath.Path(__file__)

  def __init__(self, *, rows: Mapping[str, Mapping[str, np.ndarray]] | None = None,
               metadata: Mapping[str, Any] | None = None, **kwargs):
    self._rows = rows
    self._metadata = dict(metadata or {})
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Encrypted-traffic flows tokenized for PASS.",
        features=_features(),
        metadata=tfds.core.MetadataDict(self._metadata),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(self._rows[s]) for s in SPLITS
            if len(self._rows.get(s, {}).get("tokens", ()))}

  def _generate_examples(self, data):
    columns = [k for k in _features().keys()]
    for i in range(len(data["tokens"])):
      yield i, {k: data[k][i] for k in columns}


def _fresh_tfds_dir(out_dir) -> str:
  """out_dir/tfds without an older build: tfds would silently reuse its shards."""
  tfds_dir = pathlib.Path(out_dir) / "tfds"
  shutil.rmtree(tfds_dir / NAME, ignore_errors=True)
  tfds.disable_progress_bar()
  return os.fspath(tfds_dir)


def write_tfds(out_dir, rows: Mapping[str, Mapping[str, np.ndarray]],
               metadata: Mapping[str, Any]) -> pathlib.Path:
  """Writes the dataset under out_dir/tfds and returns the version directory."""
  builder = PassFlows(data_dir=_fresh_tfds_dir(out_dir), rows=rows,
                      metadata=metadata)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return pathlib.Path(builder.data_dir)


# ------------------------------------------------------------------------ Beam
def read_capture_flows(root: str, flow_cfg, capture: str) -> list[FlowRecord]:
  """Default Beam flow source: the reader of input_pipeline/flows.py."""
  from input_pipeline import flows  # pylint: disable=g-import-not-at-top
  records, _ = flows.read_flows(os.path.join(root, capture), flow_cfg, capture_name=capture)
  return records


def _rows_of_capture(capture: str, *, flow_source, vocab_state, table):
  """One capture -> (split, (row, example)) for every flow the table keeps."""
  vocab = vocab_lib.Vocab(**vocab_state)
  kept = [f for f in flow_source(capture) if f.flow_id in table]
  if not kept:
    return
  tokens = vocab.encode_batch(kept)
  for flow, tok in zip(kept, tokens):
    split, row, label, hidden = table[flow.flow_id]
    yield split, (row, {"tokens": tok, "label": label, "hidden_label": hidden,
                        "flow_id": flow.flow_id, "comm_key": flow.comm_key,
                        "capture": flow.capture})


class PassFlowsBeam(PassFlows, skip_registration=True):
  """The same dataset, generated by a Beam pipeline sharded over captures.

  `table` maps flow_id -> (split, row, label, hidden_label) and comes from
  the split assignment; `flow_source(capture) -> list[FlowRecord]` must be
  picklable (default: `read_capture_flows` bound to a root and FlowConfig).
  """
  name = NAME

  def __init__(self, *, captures: Sequence[str], table: Mapping[str, tuple],
               vocab: vocab_lib.Vocab, flow_source: Callable[[str], list[FlowRecord]],
               metadata: Mapping[str, Any] | None = None, **kwargs):
    self._captures = sorted(captures)
    self._table = dict(table)
    self._vocab_state = dict(tokens=vocab.tokens, counts=vocab.counts,
                             payload_bytes=vocab.payload_bytes,
                             num_lengths=vocab.num_lengths, features=vocab.features,
                             mask_sni=vocab.mask_sni)
    self._flow_source = flow_source
    super().__init__(metadata=metadata, **kwargs)

  def _split_generators(self, dl_manager, pipeline):
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    del dl_manager
    shared = (pipeline
              | "Captures" >> beam.Create(self._captures)
              | "Spread" >> beam.Reshuffle()
              | "Tokenize" >> beam.FlatMap(functools.partial(
                  _rows_of_capture, flow_source=self._flow_source,
                  vocab_state=self._vocab_state, table=self._table)))
    present = sorted({v[0] for v in self._table.values()}, key=SPLITS.index)
    return {s: shared | f"Select_{s}" >> beam.Filter(lambda kv, s=s: kv[0] == s)
            | f"Unwrap_{s}" >> beam.Map(lambda kv: kv[1]) for s in present}

  def _generate_examples(self, **kwargs):  # examples come from _split_generators
    raise NotImplementedError


def write_tfds_beam(out_dir, *, captures, table, vocab, flow_source, metadata,
                    beam_runner: str = "DirectRunner",
                    beam_options: Sequence[str] = ()) -> pathlib.Path:
  """Writes the same dataset as `write_tfds`, generated by Apache Beam."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  builder = PassFlowsBeam(data_dir=_fresh_tfds_dir(out_dir),
                          captures=captures, table=table, vocab=vocab,
                          flow_source=flow_source, metadata=metadata)
  options = beam.options.pipeline_options.PipelineOptions(
      [f"--runner={beam_runner}", *beam_options])
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, beam_options=options))
  return pathlib.Path(builder.data_dir)


# --------------------------------------------------------------------- reading
def find_version_dir(data_dir) -> pathlib.Path:
  """The directory holding dataset_info.json, given a build or tfds data dir."""
  data_dir = pathlib.Path(data_dir)
  for candidate in (data_dir, data_dir / NAME / DATASET_VERSION,
                    data_dir / "tfds" / NAME / DATASET_VERSION):
    if (candidate / "dataset_info.json").is_file():
      return candidate
  found = sorted(data_dir.glob("**/dataset_info.json"))
  if not found:
    raise FileNotFoundError(f"no tfds dataset (dataset_info.json) under {data_dir}")
  return found[0].parent


def load_metadata(data_dir) -> dict[str, Any]:
  builder = tfds.builder_from_directory(find_version_dir(data_dir))
  return dict(builder.info.metadata or {})


def load_vocab(data_dir) -> vocab_lib.Vocab:
  """The vocabulary stored with the dataset."""
  state = dict(load_metadata(data_dir)["vocab"])
  state.pop("seq_len", None)
  return vocab_lib.Vocab(**state)


def load_split_arrays(data_dir, split: str, batch_size: int = 16_384) -> dict[str, np.ndarray]:
  """The contract's dataset dict of one split, read from the tfds shards."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
  builder = tfds.builder_from_directory(find_version_dir(data_dir))
  seq_len = int(builder.info.metadata["vocab"]["seq_len"])
  if split not in builder.info.splits or builder.info.splits[split].num_examples == 0:
    out = {"tokens": np.zeros((0, seq_len), np.int32), "label": np.zeros(0, np.int32),
           "hidden_label": np.zeros(0, np.int32)}
    out.update({k: np.zeros(0, dtype=str) for k in STRING_FIELDS})
    return out
  ds = builder.as_dataset(split=split, shuffle_files=False).batch(batch_size)
  parts: dict[str, list[np.ndarray]] = {}
  for batch in tfds.as_numpy(ds):
    for k, v in batch.items():
      parts.setdefault(k, []).append(v)
  out = {k: np.concatenate(v) for k, v in parts.items()}
  for k in STRING_FIELDS:
    out[k] = np.char.decode(out[k].astype(bytes), "utf-8")
  out["tokens"] = out["tokens"].astype(np.int32).reshape(-1, seq_len)
  return out


def vocab_metadata(vocab: vocab_lib.Vocab) -> dict[str, Any]:
  return dict(tokens=vocab.tokens, counts=vocab.counts, payload_bytes=vocab.payload_bytes,
              num_lengths=vocab.num_lengths, features=vocab.features,
              mask_sni=vocab.mask_sni, seq_len=vocab.seq_len)


def tf_dataset(data_dir, split: str) -> tf.data.Dataset:
  """The split as a tf.data.Dataset of examples (for corpora beyond memory)."""
  builder = tfds.builder_from_directory(find_version_dir(data_dir))
  return builder.as_dataset(split=split, shuffle_files=False)
