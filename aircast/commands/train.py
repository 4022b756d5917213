"""`aircast train [--every [SECONDS]]`: one training round (or scheduled rounds) on the
Ray cluster the settings point at; the same as ``ray job submit -- python -m training.job``."""

from __future__ import annotations

import argparse


def cmd_train(settings: object, args: argparse.Namespace) -> int:
    from training.job import main

    argv: list[str] = []
    if args.config is not None:
        argv += ["--config", str(args.config)]
    if args.every is not None:
        argv += ["--every"] + ([] if args.every == -1.0 else [str(args.every)])
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    return main(argv)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="fit and register forecasting models on Ray Train")
    p.add_argument(
        "--every", type=float, nargs="?", const=-1.0, default=None, help="repeat every SECONDS"
    )
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers")
    p.set_defaults(func=cmd_train)
