"""Exit codes of the qsmbids commands: kept here for the command line, defined once in :mod:`qsmbids.exit_codes`."""

from ..exit_codes import (  # noqa: F401 - the public names of this module
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NO_MATCH,
    EX_NOINPUT,
    EX_OK,
    EX_SOFTWARE,
    EX_UNKNOWN_LEVEL,
    EX_USAGE,
    EX_VALIDATION,
    Refusal,
)
