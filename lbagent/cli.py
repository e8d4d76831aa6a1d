"""The ``lbagent`` command line. Each command imports its machinery lazily, so ``lbagent run`` never
pays for (or needs) the simulator or torch."""

from __future__ import annotations

import click

from lbagent import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lbagent")
def main() -> None:
    """lbagent: a live CPU load-balancing agent for Linux with a learned policy.

    \b
    Example:
      lbagent eval --suite park --policies lwl,sed,random --episodes 8 --seed 1000
    """


if __name__ == "__main__":
    main()
