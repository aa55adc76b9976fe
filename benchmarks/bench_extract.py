"""Throughput of flow extraction (input_pipeline/flows.py) over a folder of captures.

  python benchmarks/bench_extract.py ../shared/datasets --workers 2
  python benchmarks/bench_extract.py --synthetic-mb 200 --workers 2   # writes a temp pcap first

Prints packets/s, flows/s, MB/s and peak RSS, in one process and with N worker
processes over files. Each measurement runs in a fresh child process so its
peak RSS is its own (ru_maxrss never goes down). Numbers are wall-clock.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import resource
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from input_pipeline import flows  # noqa: E402

_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp")


def capture_files(root: pathlib.Path) -> list[pathlib.Path]:
  if root.is_file():
    return [root]
  return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)


def _measure(paths, workers, out):
  start, cpu_start = time.perf_counter(), time.process_time()
  results = flows.read_many(paths, flows.FlowConfig(), workers=workers)
  seconds = time.perf_counter() - start
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = time.process_time() - cpu_start + children.ru_utime + children.ru_stime
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  if workers > 1:  # workers are our children: the largest of them is what one needs
    peak_kib = max(peak_kib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
  out.put({
      "workers": workers, "seconds": seconds, "cpu_seconds": cpu,
      "packets": sum(s.packets for _, s in results), "flows": sum(s.flows for _, s in results),
      "bytes": sum(s.file_bytes for _, s in results),
      "errors": sum(bool(s.error) for _, s in results), "peak_rss_mib": peak_kib / 1024})


def run(paths, workers) -> dict:
  """One measurement in a fresh process."""
  ctx = multiprocessing.get_context("spawn")
  out = ctx.Queue()
  proc = ctx.Process(target=_measure, args=(paths, workers, out))
  proc.start()
  res = out.get()
  proc.join()
  return res


def concat_pcaps(paths, out_path: str, size_bytes: float) -> None:
  """One big capture from the records of the given classic pcaps that share a header layout.

  Only little-endian microsecond Ethernet files are taken, so a single global header is right for
  all of them; their record bytes are appended, again and again, until the file reaches size_bytes.
  """
  header, bodies = None, []
  for p in paths:
    with open(p, "rb") as f:
      data = f.read()
    plain = len(data) > 24 and data[:4] == b"\xd4\xc3\xb2\xa1" and data[20:24] == b"\x01\0\0\0"
    # The "modified" 24-byte-record variant hides under the same magic: ask the reader.
    if plain and flows.read_flows(p)[1].format == "pcap":
      header = header or data[:24]
      bodies.append(data[24:])
  if header is None:
    raise SystemExit("--concat-mb: no little-endian microsecond Ethernet pcap under the path")
  body = b"".join(bodies)
  with open(out_path, "wb") as out:
    out.write(header)
    while out.tell() < size_bytes:
      out.write(body)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("path", nargs="?", help="capture file or folder (searched recursively)")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--synthetic-mb", type=float, default=0,
                      help="also write and measure a synthetic pcap of this size")
  parser.add_argument("--concat-mb", type=float, default=0,
                      help="also measure two files of this size made by concatenating the records "
                           "of PATH's little-endian microsecond Ethernet pcaps (real, packet-dense)")
  parser.add_argument("--repeat", type=int, default=1, help="keep the best of this many runs")
  parser.add_argument("--json", action="store_true", help="print one JSON line per run")
  args = parser.parse_args()
  sets = []
  if args.path:
    sets.append((args.path, [str(p) for p in capture_files(pathlib.Path(args.path))]))
  tmp = None
  if args.synthetic_mb:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    import pcap_craft  # pylint: disable=g-import-not-at-top
    tmp = tempfile.mkdtemp(prefix="bench_extract_")
    # Two files so that two workers have something to share.
    files = []
    for i in range(2):
      p = os.path.join(tmp, f"synthetic{i}.pcap")
      pcap_craft.synthetic_pcap(p, int(args.synthetic_mb * 2**20 / 2), seed=i)
      files.append(p)
    sets.append((f"synthetic {args.synthetic_mb:g} MB", files))
  if args.concat_mb and args.path:
    tmp = tmp or tempfile.mkdtemp(prefix="bench_extract_")
    files = [os.path.join(tmp, f"concat{i}.pcap") for i in range(2)]
    for p in files:
      concat_pcaps(sets[0][1], p, args.concat_mb * 1e6)
    sets.append((f"real records concatenated, 2 x {args.concat_mb:g} MB", files))
  if not sets:
    parser.error("give a path and/or --synthetic-mb")
  for name, paths in sets:
    for workers in sorted({1, args.workers}):
      best = min((run(paths, workers) for _ in range(args.repeat)), key=lambda r: r["seconds"])
      s = best["seconds"]
      if args.json:
        print(json.dumps({"set": name, "files": len(paths), **best}))
        continue
      print(f"{name}: {len(paths)} files, {best['packets']:,} packets, {best['flows']:,} flows, "
            f"{best['bytes'] / 2**20:.1f} MB, workers={workers}: {s:.2f} s, "
            f"{best['packets'] / s:,.0f} packets/s, {best['flows'] / s:,.0f} flows/s, "
            f"{best['bytes'] / 2**20 / s:.1f} MB/s, peak RSS {best['peak_rss_mib']:.0f} MiB, "
            f"files with errors {best['errors']}; CPU {best['cpu_seconds']:.2f} s = "
            f"{best['packets'] / best['cpu_seconds']:,.0f} packets per CPU-second")
  if tmp:
    for p in pathlib.Path(tmp).iterdir():
      p.unlink()
    os.rmdir(tmp)


if __name__ == "__main__":
  main()
