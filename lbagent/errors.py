"""The one base class for faults a user can fix (bad config, trace, scenario or policy file).

The command line turns any of them into a one-line message and exit code 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or host, described well enough to fix it."""
