"""``python -m lorakit``: the same command line as the ``lorakit`` script (useful where scripts are not on PATH)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
