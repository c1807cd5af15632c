"""Time the synthetic generator on 10,000 images (preset bench10k) and print one JSON line.

    python benchmarks/synthetic_gen.py [--preset bench10k] [--workers 2] [--size 64] [--keep DIR]

Reports wall and CPU seconds (this process + its workers) and the load average before and after:
on a shared machine wall time measures the neighbours too, CPU seconds do not.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from mast.data.synthetic import PRESETS, generate


def cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench10k")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--keep", type=Path, help="write here (must be empty) instead of a temp dir")
    args = parser.parse_args()
    spec = replace(PRESETS[args.preset](size=args.size), workers=args.workers)
    out = args.keep or Path(tempfile.mkdtemp(prefix="mast-synthetic-bench-")) / "data"
    load_before, cpu0, start = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    generate(out, spec)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    images = json.loads((out / "COMPLETE").read_text())["images"]
    if args.keep is None:
        shutil.rmtree(out.parent)
    print(json.dumps({"benchmark": "synthetic_gen", "preset": args.preset, "size": args.size,
                      "workers": args.workers, "images": images, "wall_s": round(wall, 2),
                      "cpu_s": round(cpu, 2), "images_per_cpu_s": round(images / cpu, 1),
                      "cpus": os.cpu_count(), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
