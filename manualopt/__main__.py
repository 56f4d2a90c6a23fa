"""``python -m manualopt``: the ``manualopt`` command, e.g. ``python -m manualopt new gan``."""

import sys

from manualopt._cli import main

if __name__ == "__main__":
    sys.exit(main())
