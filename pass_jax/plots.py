"""The run report's pictures: each function returns PNG bytes, nothing here touches the disk.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas, never through pyplot, so no
display, global figure registry or backend switch is involved and a report can be written from a
training job on a headless host. `report.py` decides what to draw and where the bytes go.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

# Above these class counts per-cell numbers and per-point names become unreadable clutter.
_ANNOTATE_CELLS_UP_TO = 20
_ANNOTATE_POINTS_UP_TO = 40


def _png(fig: Figure) -> bytes:
  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  return buf.getvalue()


def _tick_fontsize(num_classes: int, side_inches: float) -> float:
  # One class per row: a label may take ~60% of a row's height in points (72 per inch).
  return float(np.clip(0.6 * side_inches * 72.0 / max(num_classes, 1), 4.0, 9.0))


def row_normalise(confusion: np.ndarray) -> np.ndarray:
  """Each row (true class) divided by its support; rows without test flows stay zero."""
  confusion = np.asarray(confusion, dtype=np.float64)
  totals = confusion.sum(axis=1, keepdims=True)
  return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def confusion_png(confusion: np.ndarray, class_names: Sequence[str]) -> bytes:
  """Row-normalised confusion matrix: the diagonal is per-class recall, so small classes show."""
  norm = row_normalise(confusion)
  k = len(class_names)
  side = float(np.clip(3.0 + 0.4 * k, 5.0, 30.0))
  fig = Figure(figsize=(side + 1.5, side))
  ax = fig.add_subplot()
  im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
  fs = _tick_fontsize(k, side)
  ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=fs)
  ax.set_yticks(range(k), labels=list(class_names), fontsize=fs)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title("Test confusion matrix (row-normalised)")
  if k <= _ANNOTATE_CELLS_UP_TO:
    for i in range(k):
      for j in range(k):
        if norm[i, j] > 0:
          ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=fs - 1,
                  color="white" if norm[i, j] > 0.5 else "black")
  return _png(fig)


def f1_vs_support_png(f1: Sequence[float], train_support: Sequence[int],
                      class_names: Sequence[str], macro_f1: float | None) -> bytes:
  """Per-class F1 against the class's number of training flows, on a log axis.

  The imbalance story in one picture: with a long-tailed dataset the tail classes sit on the
  left, and whether their F1 falls away from the head classes is what PASS's resampling is for.
  """
  f1 = np.asarray(f1, dtype=np.float64)
  # A class with no training flows cannot sit on a log axis; draw it just left of 1.
  x = np.maximum(np.asarray(train_support, dtype=np.float64), 0.7)
  fig = Figure(figsize=(8, 5))
  ax = fig.add_subplot()
  ax.scatter(x, f1, s=36, color="tab:blue", alpha=0.8, edgecolors="black", linewidths=0.5)
  if len(class_names) <= _ANNOTATE_POINTS_UP_TO:
    for xi, yi, name in zip(x, f1, class_names):
      ax.annotate(str(name), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
  if macro_f1 is not None:
    ax.axhline(macro_f1, color="tab:red", linestyle="--", linewidth=1,
               label=f"macro-F1 {macro_f1:.3f}")
    ax.legend(loc="lower right")
  ax.set_xscale("log")
  ax.set_ylim(-0.03, 1.05)
  ax.set_xlabel("training flows of the class (log scale)")
  ax.set_ylabel("test F1")
  ax.set_title("Per-class F1 against class size")
  ax.grid(True, which="both", alpha=0.3)
  return _png(fig)


def _series(entries: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
  rows = [(e.get("step", i), e[key]) for i, e in enumerate(entries)
          if e.get(key) is not None]
  if not rows:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*rows)
  return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _by_round(entries: Sequence[Mapping]) -> dict:
  """Fine-tuning entries grouped by their `round` (PLI retrains), None when there is none."""
  groups: dict = {}
  for e in entries:
    groups.setdefault(e.get("round"), []).append(e)
  return groups


def _empty(ax, text: str) -> None:
  ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
  ax.set_xticks([])
  ax.set_yticks([])


def training_curves_png(history: Mapping, pli_rounds: Sequence[Mapping]) -> bytes:
  """Four panels: pre-training loss, fine-tuning loss with validation macro-F1, and per PLI
  round the validation macro-F1 with accepted pseudo-labels and the two loss weights w1, w2."""
  fig = Figure(figsize=(12, 8))
  (ax_pre, ax_ft), (ax_pli, ax_w) = fig.subplots(2, 2)

  steps, loss = _series(history.get("pretrain", []), "loss")
  if steps.size:
    ax_pre.plot(steps, loss, color="tab:purple")
    ax_pre.set_xlabel("step")
    ax_pre.set_ylabel("contrastive loss")
  else:
    _empty(ax_pre, "no pre-training (disabled or skipped)")
  ax_pre.set_title("Pre-training")

  ft = history.get("finetune", [])
  ft_eval = history.get("finetune_eval", [])
  if ft or ft_eval:
    for rnd, entries in _by_round(ft).items():
      steps, loss = _series(entries, "loss")
      ax_ft.plot(steps, loss, alpha=0.8,
                 label="train loss" if rnd is None else f"train loss, round {rnd}")
    ax_ft.set_xlabel("step")
    ax_ft.set_ylabel("classification loss")
    ax_f1 = ax_ft.twinx()
    for rnd, entries in _by_round(ft_eval).items():
      steps, f1 = _series(entries, "macro_f1")
      ax_f1.plot(steps, f1, marker="o", linestyle="--",
                 label="val macro-F1" if rnd is None else f"val macro-F1, round {rnd}")
    ax_f1.set_ylim(0.0, 1.02)
    ax_f1.set_ylabel("validation macro-F1")
    lines = ax_ft.get_legend_handles_labels()
    lines2 = ax_f1.get_legend_handles_labels()
    ax_ft.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="center right")
  else:
    _empty(ax_ft, "no fine-tuning history")
  ax_ft.set_title("Fine-tuning")

  rounds = [r for r in pli_rounds if r.get("round") is not None]
  if rounds:
    idx = np.asarray([r["round"] for r in rounds])
    accepted = np.asarray([r.get("accepted") or 0 for r in rounds], dtype=np.float64)
    ax_pli.bar(idx, accepted, color="tab:gray", alpha=0.5, label="accepted pseudo-labels")
    ax_pli.set_xlabel("PLI round")
    ax_pli.set_ylabel("accepted pseudo-labels")
    ax_pf1 = ax_pli.twinx()
    steps, f1 = _series([{"step": r["round"], "v": r.get("val_macro_f1")} for r in rounds], "v")
    ax_pf1.plot(steps, f1, marker="o", color="tab:green", label="val macro-F1")
    ax_pf1.set_ylim(0.0, 1.02)
    ax_pf1.set_ylabel("validation macro-F1")
    h1, l1 = ax_pli.get_legend_handles_labels()
    h2, l2 = ax_pf1.get_legend_handles_labels()
    ax_pli.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax_pli.set_xticks(idx)
    for key, name, color in (("w_labeled", "w1 (labelled)", "tab:blue"),
                             ("w_pseudo", "w2 (pseudo)", "tab:orange")):
      steps, w = _series([{"step": r["round"], "v": r.get(key)} for r in rounds], "v")
      if steps.size:
        ax_w.plot(steps, w, marker="s", color=color, label=name)
    ax_w.set_xlabel("PLI round")
    ax_w.set_ylabel("loss weight")
    ax_w.set_xticks(idx)
    if ax_w.get_legend_handles_labels()[0]:
      ax_w.legend(fontsize=7)
  else:
    _empty(ax_pli, "no pseudo-label rounds")
    _empty(ax_w, "no pseudo-label rounds")
  ax_pli.set_title("Pseudo-label iteration")
  ax_w.set_title("Loss weights w1, w2 per round")
  for ax in (ax_pre, ax_ft, ax_pli, ax_w):
    ax.grid(True, alpha=0.3)
  fig.tight_layout()
  return _png(fig)


def select_tsne_points(labels: np.ndarray, class_ids: Sequence[int], max_points: int,
                       seed: int) -> np.ndarray:
  """Row indices of a stratified sample of at most `max_points` flows of `class_ids`.

  Quotas are proportional to class size, with a floor so that the tail classes of an imbalanced
  test set still show up as a visible cluster instead of two dots.
  """
  labels = np.asarray(labels)
  members = [np.flatnonzero(labels == c) for c in class_ids]
  counts = np.asarray([m.size for m in members], dtype=np.int64)
  total = int(counts.sum())
  if total <= max_points:
    quota = counts.copy()
  else:
    floor = np.minimum(counts, max(1, max_points // (5 * max(len(class_ids), 1))))
    quota = np.maximum(np.floor(max_points * counts / total).astype(np.int64), floor)
    while quota.sum() > max_points:  # the floors can overshoot; take back from the largest
      i = int(np.argmax(quota - floor))
      quota[i] -= 1
  rng = np.random.default_rng(seed)
  chosen = [rng.choice(m, size=q, replace=False) for m, q in zip(members, quota) if q > 0]
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def tsne_2d(embeddings: np.ndarray, seed: int) -> np.ndarray:
  """t-SNE of the classification-layer inputs (PCA to 50 dims first, as sklearn advises)."""
  from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  x = np.asarray(embeddings, dtype=np.float32)
  if x.shape[1] > 50 and x.shape[0] > 50:
    x = PCA(n_components=50, random_state=seed).fit_transform(x)
  # Perplexity must stay below the number of points; ~n/3 keeps small test sets meaningful.
  perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3.0)))
  return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
              random_state=seed).fit_transform(x)


def tsne_png(points_2d: np.ndarray, labels: np.ndarray, class_ids: Sequence[int],
             class_names: Sequence[str]) -> bytes:
  """2-D t-SNE scatter coloured by true class (the paper's Fig. 4)."""
  fig = Figure(figsize=(8, 7))
  ax = fig.add_subplot()
  cmap = "tab10" if len(class_ids) <= 10 else "tab20"
  colors = matplotlib.colormaps[cmap].colors
  markers = "osD^v<>"
  for n, c in enumerate(class_ids):
    sel = labels == c
    ax.scatter(points_2d[sel, 0], points_2d[sel, 1], s=10, alpha=0.75,
               color=colors[n % len(colors)], marker=markers[(n // len(colors)) % len(markers)],
               label=f"{class_names[c]} ({int(sel.sum())})")
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=1.5)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title("t-SNE of classification-layer inputs, test flows")
  return _png(fig)
