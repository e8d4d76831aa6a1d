"""The one base class for faults a user can fix (bad config, trace, scenario or policy file).

The command line turns any of them into a one-line message and exit code 2; anything else is a bug
and keeps its traceback.
"""

import reprlib


class UserError(Exception):
    """A problem with the user's input or host, described well enough to fix it."""


def brief(value: object) -> str:
    """A value for a one-line message: cut short and shallow, since a bad file can hold a megabyte
    string or a list nested hundreds deep (a plain ``repr`` would flood the log or recurse)."""
    return _BRIEF.repr(value)


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlist, _BRIEF.maxdict = 2, 40, 40, 4, 4
