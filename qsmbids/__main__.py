"""``python -m qsmbids`` = the ``qsmbids`` command."""

from .cli.run import main

if __name__ == "__main__":
    main()
