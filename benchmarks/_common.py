"""What every benchmark script writes: machine facts and the JSON result file."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def machine() -> dict:
    """Platform, torch version and threads, and the GPU if there is one."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_result(out: str | Path, result: dict) -> Path:
    """Add the command line and machine facts to ``result``, write it as JSON to ``out``, say so."""
    result = {"command": " ".join([sys.executable, *sys.argv]), "machine": machine(), **result}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return out
