"""Host memory of Focus-N-Fix training over many steps (issue 16): does process RSS stay flat after warm-up?

Three arms, each in a fresh process (RSS from /proc/self/status, sampled every ``--every`` steps):

* ``fresh``  -- the default: fresh noise seeds every step, ``train.reference_cache=memory``. No pair can
  recur, so no reference cache is built (before issue 16 every reference was kept: 512 entries of
  Î0, M and the heatmap in float32, 2.5 GiB at 512 px).
* ``pool``   -- ``data.seed_pool`` (pairs recur): the cache fills with the pool's pairs and then hits.
* ``forced`` -- fresh seeds with a memory cache attached anyway (what the old default did) within
  ``--budget-mb``: RSS grows by the budget, then stays flat (LRU by bytes).

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/cache_memory.py            # tiny model, 64 px, 300 steps
    python benchmarks/cache_memory.py --steps 20 --every 5 --resolution 32        # a quick look

Writes ``benchmarks/results/cache_memory.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("fresh", "pool", "forced")


def rss_mb() -> float:
    """Resident set size of this process (MiB), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def worker(args) -> None:
    """One arm: build the trainer, run the steps, print one JSON line per sample."""
    import torch

    torch.set_num_threads(1)
    from focusnfix.training.cache import ReferenceCache, reference_fingerprint
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    out = Path(tempfile.mkdtemp(prefix="cache-memory-"))
    overrides = [f"model.path={args.model}",
                 "data.prompts=[a red circle, a blue square, a green triangle, a yellow dot]",
                 "sampler.steps=4", "sampler.k=2", "lora.rank=4", "mask.threshold=0.3", "train.cpu=true",
                 f"train.batch_size={args.batch}", f"train.steps={args.steps}", f"train.output_dir={out / 'run'}",
                 f"train.reference_cache_mb={args.budget_mb}", f"model.resolution={args.resolution}"]
    if args.worker == "pool":
        overrides.append(f"data.seed_pool={args.seed_pool}")
    cfg = load_config(None, overrides)
    t = Trainer(cfg)
    if args.worker == "forced":
        t.method.cache = ReferenceCache(reference_fingerprint(t.backbone, t.reward, cfg), None,
                                        int(args.budget_mb * 2**20))
    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            cache = t.method.cache
            row = {"step": step, "rss_mb": round(rss_mb(), 2), "seconds": round(time.perf_counter() - start, 2),
                   "cache_entries": len(cache.memory) if cache else 0,
                   "cache_mb": round(cache.bytes / 2**20, 3) if cache else 0.0,
                   "hits": cache.hits if cache else 0, "misses": cache.misses if cache else 0}
            print(json.dumps(row), flush=True)
        if step < args.steps:
            t.train_step()


def run_arm(arm: str, args) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", arm, *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                        if k not in ("worker", "out", "arms"))]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{r.stderr[-3000:]}")
    return [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]


def summarise(rows: list[dict], warmup: int) -> dict:
    """RSS at the end of warm-up and at the end; growth after warm-up; flat = growth <= 2 MiB + 1 % of RSS
    (allocator noise; one 64 px batch of 4 compact entries is 0.2 MiB, the forced arm grows by its budget)."""
    after = [r for r in rows if r["step"] >= warmup]
    first, last = after[0], rows[-1]
    growth = last["rss_mb"] - first["rss_mb"]
    steps = max(1, last["step"] - first["step"])
    return {"rss_warm_mb": first["rss_mb"], "rss_end_mb": last["rss_mb"], "growth_after_warmup_mb": round(growth, 2),
            "kib_per_step": round(growth * 1024 / steps, 2), "flat": growth <= 2.0 + 0.01 * first["rss_mb"],
            "cache_entries": last["cache_entries"], "cache_mb": last["cache_mb"], "hits": last["hits"],
            "misses": last["misses"], "s_per_step": round(last["seconds"] / max(1, last["step"]), 3)}


def table(summary: dict, args) -> str:
    head = (f"{'arm':8} {'RSS@warm':>9} {'RSS@end':>8} {'growth':>7} {'KiB/step':>8} {'entries':>7} {'cacheMB':>7} "
            f"{'hits':>5} {'miss':>5} {'s/step':>6}  flat")
    lines = [f"Focus-N-Fix, {args.model} model, {args.resolution} px, batch {args.batch}, {args.steps} steps; "
             f"warm-up = first {args.warmup} steps; RSS in MiB", head]
    for arm, s in summary.items():
        lines.append(f"{arm:8} {s['rss_warm_mb']:9.1f} {s['rss_end_mb']:8.1f} {s['growth_after_warmup_mb']:7.1f} "
                     f"{s['kib_per_step']:8.1f} {s['cache_entries']:7d} {s['cache_mb']:7.2f} {s['hits']:5d} "
                     f"{s['misses']:5d} {s['s_per_step']:6.2f}  {'yes' if s['flat'] else 'NO'}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=25, help="sample RSS every N steps")
    p.add_argument("--warmup", type=int, default=50, help="steps before RSS should be flat")
    p.add_argument("--model", default="tiny", help="tiny (random, fast) or world (the built-in world's model)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed-pool", type=int, default=8, help="the pool arm's data.seed_pool (x 4 prompts = pairs)")
    p.add_argument("--budget-mb", type=float, default=8.0, help="train.reference_cache_mb of every arm")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results" / "cache_memory.json"))
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from _common import write_result

    rows = {arm: run_arm(arm, args) for arm in args.arms.split(",")}
    summary = {arm: summarise(r, args.warmup) for arm, r in rows.items()}
    print(table(summary, args))
    entry_kib = (3 * 4 + 1) * args.resolution**2 / 1024
    previous_kib = 5 * 4 * args.resolution**2 / 1024
    print(f"entry: {entry_kib:.1f} KiB now (Î0 float32 + M uint8), {previous_kib:.1f} KiB before "
          f"(Î0, M, heatmap float32, kept for every fresh pair up to 512 items = {512 * previous_kib / 1024:.1f} MiB)")
    write_result(args.out, {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
                            "summary": summary, "samples": rows, "entry_kib": entry_kib,
                            "previous_entry_kib": previous_kib})


if __name__ == "__main__":
    main()
