"""``python -m promptops.detection.root_cause``: see :mod:`.cli`."""

import sys

from promptops.detection.root_cause.cli import main

if __name__ == "__main__":
    sys.exit(main())
