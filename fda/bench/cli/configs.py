"""``fda-bench validate-config`` and ``cells``: the config commands. They import no torch of their
own, so they answer at once (the config's checks may still load the suites)."""

from __future__ import annotations

import argparse

from fda.bench.cli.common import AddCommand, config_args


def cmd_validate_config(args: argparse.Namespace) -> int:
    """Check the config files; an invalid one raises ``ConfigError`` (``main`` prints it, status 2)."""
    from fda.bench.config.load import load_config
    from fda.bench.config.naming import cells

    config = load_config(args.configfile, args.config)
    n = len(cells(config))
    print(f"ok: {', '.join(args.configfile)} ({len(config['suites'])} suites, {n} result cells, smoke={config['smoke']})")
    return 0


def cmd_cells(args: argparse.Namespace) -> int:
    """Print the result cells the config asks for, one a line."""
    from fda.bench.config.load import load_config
    from fda.bench.config.naming import cells

    config = load_config(args.configfile, args.config)
    print("\n".join(cells(config)))
    return 0


def register(add: AddCommand) -> None:
    """Register validate-config and cells (see :func:`fda.bench.cli.build_parser`)."""
    config_args(add("validate-config", cmd_validate_config, "check config files against the workflow schema"))
    config_args(add("cells", cmd_cells, "list the result cells a config asks for"))
