"""Speed and memory of the synthetic survey generator (`fmb.data.synth.synthesize`).

    python benchmarks/synth_speed.py --n 20000          # runs n/4 and n, prints a comparison

Each size runs in a fresh Python process so its peak memory is its own. Reported per run: wall
time, objects/s, CPU-ms per object per worker, peak RSS of the writing parent (getrusage
RUSAGE_SELF), of reaped children (RUSAGE_CHILDREN: the forkserver's workers are grandchildren and
are not reaped by us, so the workers' peak is also sampled from /proc VmHWM), and disk size.
Memory that does not grow from n/4 to n shows the generator streams.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="objects in the big run (the small one is n/4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", type=Path, default=None, help="keep the big survey in this directory")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_once(args.n, args.workers, args.seed, args.keep)))
        return
    results = [measure(max(args.n // 4, 1), args, keep=None), measure(args.n, args, keep=args.keep)]
    report(results)


def measure(n: int, args: argparse.Namespace, keep: Path | None) -> dict:
    command = [sys.executable, __file__, "--single", "--n", str(n), "--workers", str(args.workers),
               "--seed", str(args.seed)] + (["--keep", str(keep)] if keep else [])
    print(f"running n={n} ...", flush=True)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_once(n: int, workers: int, seed: int, keep: Path | None) -> dict:
    from fmb.data.synth import synthesize

    out = keep or Path(tempfile.mkdtemp(prefix="synth-bench-"))
    sampler = PeakSampler(os.getpid())
    sampler.start()
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    summary = synthesize(out, n, seed, workers=workers)
    wall = time.perf_counter() - started
    sampler.stop()
    disk = sum(path.stat().st_size for path in out.iterdir() if path.is_file())
    if keep is None:
        shutil.rmtree(out)
    return {
        "n": n, "workers": workers, "wall_s": round(wall, 2), "objects_per_s": round(n / wall, 1),
        "wall_ms_per_object_per_worker": round(wall / n * workers * 1e3, 2),
        "worker_cpu_ms_per_object": round(sampler.descendant_cpu / n * 1e3, 2) if sampler.descendant_cpu else
        round((_cpu_seconds() - cpu_before) / n * 1e3, 2),
        "parent_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "reaped_children_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "worker_peak_rss_mb": round(sampler.peak_descendant_kb / 1024, 1),
        "disk_mb": round(disk / 2**20, 1), "kb_per_object": round(disk / n / 1024, 1),
        "counts": summary["classes"],
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PeakSampler(threading.Thread):
    """Polls /proc for all descendants of a process: peak RSS (VmHWM) and CPU time."""

    def __init__(self, root: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peak_descendant_kb = 0
        self.cpu_by_pid: dict[int, float] = {}
        self._done = threading.Event()

    @property
    def descendant_cpu(self) -> float:
        return sum(self.cpu_by_pid.values())

    def run(self) -> None:
        while not self._done.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self.sample()
        self._done.set()
        self.join()

    def sample(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        for pid in self._descendants():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_descendant_kb = max(self.peak_descendant_kb, int(line.split()[1]))
            self.cpu_by_pid[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def _descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(parent, []).append(int(entry.name))
        found, stack = [], [self.root]
        while stack:
            for child in children.get(stack.pop(), []):
                found.append(child)
                stack.append(child)
        return found


def report(results: list[dict]) -> None:
    small, big = results
    rows = [("objects", "n"), ("wall time (s)", "wall_s"), ("objects / s", "objects_per_s"),
            ("wall ms / object / worker", "wall_ms_per_object_per_worker"),
            ("worker CPU ms / object", "worker_cpu_ms_per_object"),
            ("parent peak RSS (MB)", "parent_peak_rss_mb"), ("worker peak RSS (MB)", "worker_peak_rss_mb"),
            ("reaped children peak RSS (MB)", "reaped_children_peak_rss_mb"),
            ("disk (MB)", "disk_mb"), ("disk per object (KB)", "kb_per_object")]
    print(f"\n{'':34s}{'n/4':>12s}{'n':>12s}{'n / (n/4)':>12s}")
    for label, key in rows:
        ratio = big[key] / small[key] if small[key] else float("nan")
        print(f"{label:34s}{small[key]:>12}{big[key]:>12}{ratio:>12.2f}")
    print(f"\nclass counts (n): {big['counts']}")
    memory_growth = big["parent_peak_rss_mb"] / small["parent_peak_rss_mb"]
    print(f"parent memory n vs n/4: x{memory_growth:.2f} (flat if ~1); "
          f"projected 20000 objects: {20000 / big['objects_per_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
