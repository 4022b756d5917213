"""`aircast train [--every [SECONDS]]`: one training round (or scheduled rounds) on the
Ray cluster the settings point at; the same as ``ray job submit -- python -m training.job``."""

from __future__ import annotations

import argparse

from aircast import options


def cmd_train(settings: object, args: argparse.Namespace) -> int:
    from training.job import main

    argv: list[str] = []
    if args.config is not None:
        argv += ["--config", str(args.config)]
    if args.every is not None:
        argv += ["--every"] + ([] if args.every == -1.0 else [str(args.every)])
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    if args.end is not None:
        argv += ["--end", str(args.end)]
    return main(argv)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="fit and register forecasting models on Ray Train")
    options.add_train(p)
    p.set_defaults(func=cmd_train)
