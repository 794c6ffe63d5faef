"""CLI: ``python -m swim.data.demo --out DIR --seed S [--num-train N ...] [--force]``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from swim.data.demo.generate import DemoParams, ensure_demo, generate_demo


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m swim.data.demo", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder (the video root)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=DemoParams.num_train)
    parser.add_argument("--num-val", type=int, default=DemoParams.num_val)
    parser.add_argument("--num-bench", type=int, default=DemoParams.num_bench)
    parser.add_argument("--num-images", type=int, default=DemoParams.num_images)
    parser.add_argument("--force", action="store_true", help="regenerate even if an identical one exists")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    make = generate_demo if args.force else ensure_demo
    manifest = make(
        args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_bench=args.num_bench,
        num_images=args.num_images,
        progress=not args.no_progress,
    )
    table = Table(title=f"demo dataset: {manifest}")
    table.add_column("item")
    table.add_column("count", justify="right")
    for item, count in json.loads(manifest.read_text())["counts"].items():
        table.add_row(item, str(count))
    Console().print(table)
    return manifest


if __name__ == "__main__":
    main()
