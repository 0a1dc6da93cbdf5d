"""Speed benchmarks, each comparing against a baseline measured in the same run; JSON on stdout.

    weightatlas bench tokenize
    weightatlas bench collect --n 1000
    weightatlas bench train --preset ci
    weightatlas bench sample
    weightatlas bench app

Each benchmark lives next to the code it measures as ``bench_<name>(args) -> dict``; this file
only maps names to them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from core.atlas import dumps

BENCHES: dict[str, str] = {
    "tokenize": "core.tokenize:bench_tokenize",
    "collect": "core.hub:bench_collect",
    "train": "core.train:bench_train",
    "sample": "core.sample:bench_sample",
    "app": "core.appbench:bench_app",
}


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("--preset", default=None, help="preset for benchmarks that take one")
    p.add_argument("--n", type=int, default=None, help="problem size for benchmarks that take one")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--device", default="cpu", help="torch device for benchmarks that use one")
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: all cores)"
    )


def run_cli(args: argparse.Namespace) -> int:
    module, func = BENCHES[args.name].split(":")
    result = getattr(importlib.import_module(module), func)(args)
    text = dumps(result, indent=2)
    print(text)
    if args.out:
        from core.atlas import atomic_write_bytes

        atomic_write_bytes(args.out, (text + "\n").encode())
    sys.stdout.flush()
    return 0
