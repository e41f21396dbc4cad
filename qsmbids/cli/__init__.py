"""Command-line entry points of qsmbids."""
