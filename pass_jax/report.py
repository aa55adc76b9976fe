"""The run report: W/report.json for programs, W/report.md for people, and W/*.png pictures.

`write_report` is the only entry point. It takes what the stages already produced (metrics from
`pass_jax/metrics.py`, histories from the trainers, the extraction report) and never recomputes a
number that was given: the JSON holds the caller's values exactly. Paths go through `etils.epath`
so a workdir on gs:// (TPU pods) works like a local one. Call it on process 0 only.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
from typing import Any, Mapping, Sequence

from etils import epath
import numpy as np

from pass_jax import plots

PICTURES = {
    "confusion": "confusion_matrix.png",
    "f1_vs_support": "f1_vs_class_size.png",
    "training_curves": "training_curves.png",
    "tsne": "tsne.png",
}
_METRICS = ("precision", "recall", "f1", "support")
_DEFAULT_TSNE_MAX_POINTS = 2000
_DEFAULT_TSNE_NUM_CLASSES = 10
# A markdown table wider than this many classes is unreadable; report.json still holds it all.
_MD_CONFUSION_UP_TO = 30


def jsonable(x: Any) -> Any:
  """Plain JSON types: numpy to Python, tuples to lists, keys to str, NaN/inf to None."""
  if hasattr(x, "to_dict"):  # ml_collections.ConfigDict
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _get(cfg: Any, key: str, default: Any) -> Any:
  try:
    value = cfg.get(key, default)
  except AttributeError:
    return default
  return default if value is None else value


def _per_class_from_confusion(confusion: np.ndarray) -> dict:
  tp = np.diag(confusion).astype(np.float64)
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
          "support": support.astype(int).tolist()}


def normalize_metrics(test_metrics: Mapping, class_names: Sequence[str]) -> dict:
  """One shape for the several the metrics module may hand over.

  `per_class` may be {name: {precision, recall, f1, support}}, {metric: [per class]}, a list of
  per-class dicts, or absent (then the lists are taken from the top level, sklearn style, or
  computed from the confusion matrix). Returns test metrics with per_class keyed by class name in
  `class_names` order and `confusion` as a list of int lists. Given values are never changed.
  """
  names = list(class_names)
  k = len(names)
  out = {key: value for key, value in test_metrics.items()
         if key not in ("per_class", "confusion", "confusion_matrix") + _METRICS}
  confusion = test_metrics.get("confusion", test_metrics.get("confusion_matrix"))
  if confusion is not None:
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.shape != (k, k):
      raise ValueError(f"confusion matrix has shape {confusion.shape}, expected ({k}, {k}) "
                       f"for {k} class names")

  per_class = test_metrics.get("per_class")
  if per_class is None and all(m in test_metrics for m in _METRICS[:3]):
    per_class = {m: test_metrics[m] for m in _METRICS if m in test_metrics}
  if per_class is None and confusion is not None:
    per_class = _per_class_from_confusion(confusion)
  if per_class is None:
    raise ValueError("test_metrics has neither per-class metrics nor a confusion matrix")

  rows: list[dict] = [{} for _ in names]
  by_metric = (isinstance(per_class, Mapping) and set(per_class) & set(_METRICS)
               and not set(per_class) & set(names))
  if by_metric:
    for metric, values in per_class.items():  # {metric: [value per class]}
      if len(values) != k:
        raise ValueError(f"per_class[{metric!r}] has {len(values)} values for {k} classes")
      for row, v in zip(rows, values):
        row[metric] = v
  elif isinstance(per_class, Mapping):  # {class name or index: {metric: value}}
    for key, metrics in per_class.items():
      if key in names:
        i = names.index(key)
      elif isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit()):
        i = int(key)
      else:
        raise ValueError(f"per_class names unknown class {key!r}")
      rows[i] = dict(metrics)
  else:  # [ {metric: value} per class ]
    if len(per_class) != k:
      raise ValueError(f"per_class has {len(per_class)} entries for {k} classes")
    rows = [dict(r) for r in per_class]

  if confusion is not None:  # fill support where the metrics left it out
    for row, s in zip(rows, confusion.sum(axis=1)):
      row.setdefault("support", int(s))
  out["per_class"] = {name: row for name, row in zip(names, rows)}
  if confusion is not None:
    out["confusion"] = confusion.tolist()
  return out


def choose_tsne_classes(cfg_classes: Sequence, labels: np.ndarray, class_names: Sequence[str]):
  """Class ids for the t-SNE picture and the configured entries that matched no class.

  Configured classes may be names or ids, in the order given; none configured -> up to 10 classes
  with the most points in `labels` (ties by id), largest first.
  """
  names = list(class_names)
  if not cfg_classes:
    present = np.bincount(labels, minlength=len(names))
    order = sorted(np.flatnonzero(present), key=lambda c: (-present[c], c))
    return [int(c) for c in order[:_DEFAULT_TSNE_NUM_CLASSES]], []
  ids, unknown = [], []
  for c in cfg_classes:
    if isinstance(c, (int, np.integer)) and 0 <= int(c) < len(names):
      ids.append(int(c))
    elif c in names:
      ids.append(names.index(c))
    else:
      unknown.append(c)
  return list(dict.fromkeys(ids)), unknown


def _tsne(workdir: epath.Path, tsne: Mapping | None, class_names, report_cfg, seed) -> dict:
  """Draws the t-SNE picture; returns what report.json records about it."""
  if tsne is None:
    return {"skipped": "no embeddings given"}
  emb = np.asarray(tsne.get("embeddings", tsne.get("embedding")), dtype=np.float32)
  labels = np.asarray(tsne.get("labels", tsne.get("label")), dtype=np.int64)
  if emb.ndim != 2 or labels.shape != (emb.shape[0],):
    raise ValueError(f"tsne embeddings {emb.shape} and labels {labels.shape} do not match")
  keep = labels >= 0  # unlabeled rows have nothing to colour by
  emb, labels = emb[keep], labels[keep]
  ids, unknown = choose_tsne_classes(tuple(_get(report_cfg, "tsne_classes", ())), labels,
                                     class_names)
  if unknown:
    logging.warning("report.tsne_classes names unknown classes %s; ignored", unknown)
  max_points = int(_get(report_cfg, "tsne_max_points", _DEFAULT_TSNE_MAX_POINTS))
  idx = plots.select_tsne_points(labels, ids, max_points, seed)
  info = {"classes": [class_names[c] for c in ids], "unknown_classes": [str(u) for u in unknown],
          "points": int(idx.size), "max_points": max_points}
  if idx.size < 5 or np.unique(labels[idx]).size < 2:
    info["skipped"] = "fewer than 5 points or 2 classes to show"
    return info
  points = plots.tsne_2d(emb[idx], seed)
  (workdir / PICTURES["tsne"]).write_bytes(
      plots.tsne_png(points, labels[idx], ids, class_names))
  info["points_per_class"] = {class_names[c]: int((labels[idx] == c).sum()) for c in ids}
  info["picture"] = PICTURES["tsne"]
  return info


def _cell(x: Any) -> str:
  if x is None:
    return "-"
  if isinstance(x, float):
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.4g}"
  if isinstance(x, (dict, list)):
    x = json.dumps(x, separators=(",", ":"))
  return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return lines + [""]


_PICTURE_TEXT = {
    "confusion": ("Confusion matrix", "Rows are true classes, normalised to 1: the diagonal is "
                  "per-class recall, off-diagonal mass shows which classes are taken for which."),
    "f1_vs_support": ("Per-class F1 against class size", "Training flows per class on a log "
                      "axis: how much the tail classes lose to the head classes."),
    "training_curves": ("Training curves", "Pre-training loss, fine-tuning loss with validation "
                        "macro-F1, and per pseudo-label round the validation macro-F1, accepted "
                        "pseudo-labels and the loss weights w1, w2."),
    "tsne": ("t-SNE of test flows", "Classification-layer inputs of test flows, coloured by true "
             "class (cf. the paper's Fig. 4)."),
}


def _accepted(pli_round: Mapping, name: str, index: int) -> Any:
  per_class = pli_round.get("accepted_per_class") or {}  # keyed by class name or id
  return per_class.get(name, per_class.get(str(index), 0))


def render_markdown(report: Mapping) -> str:
  """report.md from the report.json dict: the same facts, as tables, with the pictures linked."""
  test, names = report["test"], report["classes"]
  out = ["# PASS run report", "",
         f"Variant `{report.get('variant')}`, written {report['created']}, "
         f"{len(names)} classes, {report['total_seconds']:.1f} s in all.", "",
         "## Test results", ""]
  out += _table(["accuracy", "macro precision", "macro recall", "macro F1"],
                [[test.get(k) for k in ("accuracy", "macro_precision", "macro_recall",
                                        "macro_f1")]])
  extra = {k: v for k, v in test.items() if not isinstance(v, (dict, list)) and k not in (
      "accuracy", "macro_precision", "macro_recall", "macro_f1")}
  in_macro = test.get("classes_in_macro")  # metrics.py leaves out classes absent from the split
  if isinstance(in_macro, list) and len(in_macro) < len(names):
    out += [f"Macro averages run over the {len(in_macro)} of {len(names)} classes present in the "
            "test split or predicted.", ""]
  if extra:
    out += _table(["metric", "value"], sorted(extra.items()))

  if report["pictures"]:
    out += ["## Pictures", ""]
    for key, file in report["pictures"].items():
      title, text = _PICTURE_TEXT.get(key, (key, ""))
      out += [f"### {title}", "", f"![{title}]({file})", "", text, ""]
  tsne = report.get("tsne", {})
  if tsne.get("classes"):
    out += [f"t-SNE classes: {', '.join(tsne['classes'])} ({tsne.get('points', 0)} points)."]
  if tsne.get("skipped"):
    out += [f"t-SNE picture skipped: {tsne['skipped']}."]
  if tsne.get("unknown_classes"):
    out += [f"report.tsne_classes names no such class: {', '.join(tsne['unknown_classes'])}."]
  out += [""]

  out += ["## Per-class test results", ""]
  train = report["train_class_counts"]
  out += _table(["#", "class", "train flows", "test support", "precision", "recall", "F1"],
                [[i, n, train.get(n), test["per_class"][n].get("support"),
                  test["per_class"][n].get("precision"), test["per_class"][n].get("recall"),
                  test["per_class"][n].get("f1")] for i, n in enumerate(names)])
  if "confusion" in test:
    out += ["## Confusion matrix (counts)", ""]
    if len(names) <= _MD_CONFUSION_UP_TO:
      out += ["Rows: true class, columns: predicted class, numbered as in the per-class table.",
              ""]
      out += _table(["true \\ pred"] + [str(j) for j in range(len(names))],
                    [[f"{i} {n}"] + row
                     for i, (n, row) in enumerate(zip(names, test["confusion"]))])
    else:
      out += [f"{len(names)} classes: too wide for a table, see `test.confusion` in report.json.",
              ""]

  rounds = report["pli_rounds"]
  if rounds:
    out += ["## Pseudo-label iteration", ""]
    cols = ("round", "pool_size", "accepted", "accepted_fraction", "pseudo_label_accuracy",
            "val_macro_f1", "w_labeled", "w_pseudo", "seconds")
    out += _table(["round", "pool", "accepted", "accepted fraction", "pseudo-label accuracy",
                   "val macro-F1", "w1 (labelled)", "w2 (pseudo)", "seconds"],
                  [[r.get(c) for c in cols] for r in rounds])
    if any(r.get("accepted_per_class") for r in rounds):
      out += ["Accepted pseudo-labels per class and round:", ""]
      out += _table(["class"] + [f"round {r.get('round')}" for r in rounds],
                    [[n] + [_accepted(r, n, i) for r in rounds] for i, n in enumerate(names)])

  out += ["## Data", ""]
  out += _table(["split", "flows"], list(report["splits"].items()))
  scalars = [(k, v) for k, v in report["dataset"].items() if not isinstance(v, (dict, list))]
  nested = {k: v for k, v in report["dataset"].items() if isinstance(v, (dict, list))}
  if scalars:
    out += ["Extraction:", ""] + _table(["field", "value"], scalars)
  if nested:
    out += ["<details><summary>Extraction details</summary>", "", "```json",
            json.dumps(nested, indent=2), "```", "", "</details>", ""]
  out += ["## Wall time per stage", ""]
  out += _table(["stage", "seconds"], list(report["stage_seconds"].items())
                + [("total", report["total_seconds"])])
  out += ["## Config", "", "```json", json.dumps(report["config"], indent=2), "```", ""]
  return "\n".join(out)


def write_report(workdir, *, config, dataset_report: Mapping, split_sizes: Mapping,
                 stage_seconds: Mapping, test_metrics: Mapping, class_names: Sequence[str],
                 train_class_counts: Sequence[int], history: Mapping,
                 pli_rounds: Sequence[Mapping], tsne: Mapping | None) -> dict:
  """Writes W/report.json, W/report.md and (unless config.report.pictures is False) W/*.png.

  Args:
    workdir: the run's directory (local path or gs://).
    config: the run's ConfigDict (or a dict); `report.pictures`, `report.tsne_classes`,
      `report.tsne_max_points` (default 2000) and `seed` are read from it.
    dataset_report: the extraction report, stored as given.
    split_sizes: flows per split, e.g. {'train': .., 'unlabeled': .., 'val': .., 'test': ..}.
    stage_seconds: wall time per stage, {'extract': 12.3, ...}.
    test_metrics: accuracy, macro_precision, macro_recall, macro_f1, per_class, confusion (see
      `normalize_metrics` for the accepted per-class shapes); extra scalar keys are kept.
    class_names: class names in label-id order.
    train_class_counts: labelled training flows per class, aligned with class_names.
    history: {'pretrain': [{'step', 'loss', ..}], 'finetune': [{'step', 'loss'}],
      'finetune_eval': [{'step', 'macro_f1'}]}; entries may carry a 'round'.
    pli_rounds: one dict per pseudo-label round (round, pool_size, accepted, accepted_per_class,
      accepted_fraction, pseudo_label_accuracy, val_macro_f1, w_labeled, w_pseudo, seconds).
    tsne: {'embeddings': float[N, D] classification-layer inputs of test flows, 'labels': int[N]
      class ids}, or None to skip the picture.

  Returns:
    The report as written to report.json.
  """
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  names = [str(n) for n in class_names]
  if len(train_class_counts) != len(names):
    raise ValueError(f"{len(train_class_counts)} train class counts for {len(names)} classes")
  test = normalize_metrics(test_metrics, names)
  report_cfg = _get(config, "report", {})
  pictures_on = bool(_get(report_cfg, "pictures", True))
  seed = int(_get(config, "seed", 0))

  report = {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "variant": _get(config, "variant", None),
      "config": config,
      "dataset": dataset_report,
      "splits": split_sizes,
      "stage_seconds": stage_seconds,
      "total_seconds": float(sum(float(v) for v in stage_seconds.values())),
      "classes": names,
      "train_class_counts": dict(zip(names, (int(c) for c in train_class_counts))),
      "test": test,
      "pli_rounds": list(pli_rounds),
      "history": history,
      "pictures": {},
  }
  if pictures_on:
    f1 = [float(test["per_class"][n].get("f1", float("nan"))) for n in names]
    if "confusion" in test:
      (workdir / PICTURES["confusion"]).write_bytes(
          plots.confusion_png(np.asarray(test["confusion"]), names))
      report["pictures"]["confusion"] = PICTURES["confusion"]
    (workdir / PICTURES["f1_vs_support"]).write_bytes(plots.f1_vs_support_png(
        f1, train_class_counts, names, test.get("macro_f1")))
    report["pictures"]["f1_vs_support"] = PICTURES["f1_vs_support"]
    (workdir / PICTURES["training_curves"]).write_bytes(
        plots.training_curves_png(history, pli_rounds))
    report["pictures"]["training_curves"] = PICTURES["training_curves"]
    report["tsne"] = _tsne(workdir, tsne, names, report_cfg, seed)
    if "picture" in report["tsne"]:
      report["pictures"]["tsne"] = PICTURES["tsne"]
  else:
    report["tsne"] = {"skipped": "config.report.pictures is False"}

  report = jsonable(report)
  (workdir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
  (workdir / "report.md").write_text(render_markdown(report))
  return report
