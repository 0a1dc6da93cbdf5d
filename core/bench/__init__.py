"""Speed benchmarks, each comparing against a baseline measured in the same run; JSON on stdout.

    weightatlas bench tokenize
    weightatlas bench collect --n 1000
    weightatlas bench train --preset ci
    weightatlas bench sample
    weightatlas bench app
    weightatlas bench lineage --n 1000

One module per benchmark (``collect``, ``tokenize``, ``train``, ``sample``, ``lineage``,
``embed``; ``common`` holds what they share), each as ``bench_<name>(args) -> dict``;
``BENCHES`` here maps names to them (``weightatlas bench NAME`` in ``core.cli``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from core.bench.collect import bench_collect, make_bench_cache, scan_cache
from core.bench.common import write_store
from core.bench.embed import bench_embed
from core.bench.lineage import bench_lineage
from core.bench.sample import bench_sample
from core.bench.tokenize import bench_tokenize
from core.bench.train import bench_train

__all__ = [
    "BENCHES",
    "bench_app",
    "bench_collect",
    "bench_embed",
    "bench_lineage",
    "bench_sample",
    "bench_tokenize",
    "bench_train",
    "make_bench_cache",
    "scan_cache",
    "write_store",
]


def bench_app(args: argparse.Namespace) -> dict[str, Any]:
    """The explorer's response times in a real browser (``explorer.bench``; needs playwright).

    The explorer is imported here, not at the top: ``core`` does not depend on the app, and a
    machine without the app's browser can still run every other benchmark.
    """
    from explorer.bench import bench_app as run

    return run(args)


# name -> benchmark(args) -> JSON-ready dict
BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "embed": bench_embed,
    "tokenize": bench_tokenize,
    "collect": bench_collect,
    "train": bench_train,
    "sample": bench_sample,
    "app": bench_app,
    "lineage": bench_lineage,
}
