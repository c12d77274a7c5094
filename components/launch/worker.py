"""One rank of a training run: ``python -m components.launch.worker --call JSON [--result PATH]``.

torchrun starts this in every process (locally, or in each node of a TrainJob/PyTorchJob); rank 0 writes
the function's returned dict as JSON to ``--result``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from components.data.durable import atomic_write_bytes
from components.launch.call import TrainCall, run_call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components.launch.worker",
                                description="run one rank of a training call (started by torchrun)")
    p.add_argument("--call", required=True, help="TrainCall as JSON")
    p.add_argument("--result", default="", help="rank 0 writes the returned dict here as JSON")
    args = p.parse_args(argv)
    result = run_call(TrainCall.from_json(args.call))
    if args.result and int(os.environ.get("RANK", "0")) == 0:
        atomic_write_bytes(args.result, json.dumps(result, default=_json_default, indent=2).encode())
    return 0


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
