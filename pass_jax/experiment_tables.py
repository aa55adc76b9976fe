"""The experiment runner's tables: per-arm mean +- std over seeds, as markdown, JSON and Fig. 6.

Pure formatting of the results pass_jax/experiments.py collects; nothing here trains or reads a
run directory.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from pass_jax import experiment_arms
from pass_jax import jsonio

METRICS = experiment_arms.METRICS
VAL = "val_macro_f1"   # deep arms only: the score their checkpoint and PLI round were picked on
TIMES = ("train_s", "wall_s")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  # Sample std (ddof=1) over seeds: the spread a reader should expect from another seed.
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(arms: Sequence[experiment_arms.Arm], results: dict) -> list[dict[str, Any]]:
  rows = []
  for arm in arms:
    per_seed = results.get(arm.name, {})
    ok = {s: r for s, r in per_seed.items() if r.get("status") == "ok"}
    row = {**arm.to_json(), "seeds": per_seed, "seeds_ok": sorted(ok, key=int),
           "errors": {s: r["error"] for s, r in per_seed.items() if r.get("status") == "error"}}
    for key in METRICS + (VAL,) + TIMES:
      # Shallow and embedding arms never look at validation: their VAL cell stays empty.
      values = [r[key] for r in ok.values() if r.get(key) is not None]
      if values:
        row[key] = dict(zip(("mean", "std"), _mean_std(values)))
    rows.append(row)
  return rows


def _cell(stat: dict | None, num_seeds: int, digits: int = 4) -> str:
  if not stat:
    return "-"
  if num_seeds < 2:   # one seed has no spread to show
    return f"{stat['mean']:.{digits}f}"
  return f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}"


def table_markdown(summary: dict[str, Any]) -> str:
  head = summary["header"]
  lines = [f"# {summary['experiment']}: {summary['title']}", "",
           f"variant `{head['variant']}`, seeds {head['seeds']}, data `{head['data']}` "
           f"(split {head['split']}, label fraction {head['label_fraction']}), written "
           f"{head['written']}. Test split; mean +- std (ddof=1) over the seeds that finished; "
           "times in seconds (train = CPT + fine-tuning + PLI, or the shallow fit); val macro-F1 "
           "is that of the kept checkpoint (deep arms; the others do not use validation).", "",
           "| arm | what | accuracy | macro-P | macro-R | macro-F1 | val macro-F1 | train s "
           "| wall s | seeds |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for row in summary["arms"]:
    n = len(row["seeds_ok"])
    lines.append(f"| {row['name']} | {row['description']} | " + " | ".join(
        _cell(row.get(k), n) for k in METRICS + (VAL,)) + " | " + " | ".join(
            _cell(row.get(k), n, 1) for k in TIMES) + f" | {n}/{len(head['seeds'])} |")
  errors = [(row["name"], s, e) for row in summary["arms"] for s, e in row["errors"].items()]
  if errors:
    lines += ["", "## Errors", ""]
    lines += [f"- `{name}` seed {s}: {e.splitlines()[0][:500]}" for name, s, e in errors]
  return "\n".join(lines) + "\n"


def sensitivity_png(rows: Sequence[dict[str, Any]]) -> bytes | None:
  """Fig. 6: macro-F1 and training time against #triples and against [m/2, n]."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from pass_jax import plots  # pylint: disable=g-import-not-at-top
  groups = {"triples_x": [], "mn_": []}
  for row in rows:
    for prefix, pts in groups.items():
      if row["name"].startswith(prefix) and "macro_f1" in row:
        pts.append((row["name"][len(prefix):], row["macro_f1"]["mean"], row["train_s"]["mean"]))
  if not any(groups.values()):
    return None
  fig = Figure(figsize=(11, 3.8))
  fig.subplots_adjust(wspace=0.55)   # room for the left panel's twin axis label
  for i, ((prefix, pts), xlabel) in enumerate(zip(groups.items(), (
      "pre-training triples (x config value)", "[m/2, n]"))):
    ax = fig.add_subplot(1, 2, i + 1)
    ax.set_xlabel(xlabel)
    if not pts:
      ax.text(0.5, 0.5, "no finished arm", ha="center", transform=ax.transAxes)
      continue
    x = np.arange(len(pts))
    ax.plot(x, [p[1] for p in pts], "o-", color="C0")
    ax.set_ylabel("macro-F1", color="C0")
    ax.set_xticks(x, [p[0].replace("_", ", ") for p in pts])
    twin = ax.twinx()
    twin.plot(x, [p[2] for p in pts], "s--", color="C1")
    twin.set_ylabel("training time (s)", color="C1")
  return plots._png(fig)  # pylint: disable=protected-access


def write_tables(workdir: str, summary: dict[str, Any]) -> None:
  name = summary["experiment"]
  jsonio.write_json(os.path.join(workdir, f"{name}.json"), summary)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(table_markdown(summary))
  if name == "sensitivity":
    png = sensitivity_png(summary["arms"])
    if png:
      with open(os.path.join(workdir, "sensitivity.png"), "wb") as f:
        f.write(png)
