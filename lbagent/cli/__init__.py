"""The ``lbagent`` command line. Each command imports its machinery lazily, so ``lbagent run`` never
pays for (or needs) the simulator or torch."""

from __future__ import annotations

import os

# Before numpy loads: one OpenBLAS thread (why: lbagent/blas.py, which does the same after loading).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from lbagent import __version__  # noqa: E402
from lbagent.cli import bench, live, train  # noqa: E402
from lbagent.cli import eval as eval_cli  # noqa: E402
from lbagent.cli.common import Group  # noqa: E402


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lbagent")
def main() -> None:
    """lbagent: a live CPU load-balancing agent for Linux with a learned policy.

    \b
    Example:
      lbagent eval --suite park --policies lwl,sed,random --episodes 8 --seed 1000
    """


main.add_command(live.probe)
main.add_command(live.record)
main.add_command(live.run_cmd)
main.add_command(live.status_cmd)
main.add_command(live.service_group)
main.add_command(eval_cli.eval_cmd)
main.add_command(eval_cli.replay_cmd)
main.add_command(eval_cli.experiment)
main.add_command(train.sim_train)
main.add_command(bench.bench)
main.add_command(bench.demo_cmd)

