"""Fingerprint of what focusnfix computes, for showing that a refactor changes no behaviour.

    python tools/behaviour_snapshot.py OUT [--no-demo]

Runs, offline on the CPU, (1) ``make demo``'s program (its printed table), (2) a 20-step
``focusnfix train configs/world-artifact.yaml``, (3) a 4-step ``method=fnf-grpo`` run and (4) a 20-step
flow-world run, and writes ``OUT/snapshot.json``: the demo's table lines and the SHA-256 of every tensor of
each run's ``lora/pytorch_lora_weights.safetensors``. Two snapshots (before and after a change) are
compared with ``python tools/behaviour_snapshot.py --compare A/snapshot.json B/snapshot.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

RUNS = {
    "world-artifact-20": ["configs/world-artifact.yaml", "train.steps=20"],
    "fnf-grpo-4": ["configs/world-artifact-grpo.yaml", "train.steps=4"],
    "world-flow-20": ["configs/world-flow-artifact.yaml", "train.steps=20"],
}


def tensor_hashes(path: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
            for k, v in sorted(load_file(str(path)).items())}


def snapshot(out: Path, demo: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result: dict = {"runs": {}}
    for name, args in RUNS.items():
        run = out / name
        subprocess.run([sys.executable, "-m", "focusnfix", "train", *args, f"train.output_dir={run}"],
                       check=True, env=env)
        result["runs"][name] = tensor_hashes(run / "lora" / "pytorch_lora_weights.safetensors")
    if demo:
        done = subprocess.run([sys.executable, "-m", "focusnfix.cli.demo", "--out", str(out / "demo")], check=True,
                              env=env, capture_output=True, text=True)
        # the table: every printed line except timings and paths
        result["demo"] = [ln for ln in done.stdout.splitlines() if ln.strip()]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path)
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--compare", nargs=2, type=Path)
    args = p.parse_args(argv)
    if args.compare:
        a, b = (json.loads(x.read_text()) for x in args.compare)
        same = True
        for name in sorted(set(a["runs"]) | set(b["runs"])):
            equal = a["runs"].get(name) == b["runs"].get(name)
            same &= equal
            print(f"{name}: LoRA tensors {'bitwise identical' if equal else 'DIFFER'}")
        if "demo" in a and "demo" in b:
            la, lb = a["demo"], b["demo"]
            print(f"demo: {len(la)} vs {len(lb)} printed lines")
            for x, y in zip(la, lb):
                if x != y:
                    print(f"  - {x}\n  + {y}")
        return 0 if same else 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "snapshot.json").write_text(json.dumps(snapshot(args.out, not args.no_demo), indent=1))
    print(f"wrote {args.out / 'snapshot.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
