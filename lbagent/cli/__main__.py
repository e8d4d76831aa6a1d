"""``python -m lbagent.cli``: the same entry point as the ``lbagent`` script."""

from lbagent.cli import main

main()
