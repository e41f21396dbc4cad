"""Exit codes of the qsmbids commands (BIDS-Apps execution spec and BSD sysexits), and the refusals that carry them.

A bottom leaf of the house (STYLE §1): standard library only, so that every floor (``utils`` checking the input as
well as ``cli`` ending the run) can use one list of codes. :mod:`qsmbids.cli.exit_codes` re-exports it.
"""

EX_OK = 0
EX_VALIDATION = 16  # BIDS validation failed
EX_UNKNOWN_LEVEL = 17  # analysis level not known
EX_NO_MATCH = 18  # no input matched the filters
EX_USAGE = 64  # command-line usage error
EX_DATAERR = 65  # bad input data
EX_NOINPUT = 66  # input missing
EX_SOFTWARE = 70  # internal error
EX_CANTCREAT = 73  # cannot create output


class Refusal(Exception):
    """A run refused before (or instead of) processing: ``code`` is the exit code, the message its one line."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class InputError(Exception):
    """A refusal of the input: ``code`` is the BIDS-Apps exit code, ``str(err)`` the one-line message.

    Raised by the input checks of :mod:`qsmbids.utils` and turned into a :class:`Refusal` by the command line.
    """

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
