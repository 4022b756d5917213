"""CLI subcommands, one module each, discovered by :func:`aircast_cli.cli.build_parser`.

Each module defines ``register(sub: argparse._SubParsersAction) -> None``.
"""
