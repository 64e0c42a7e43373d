"""``python -m lit_explain``: see :mod:`lit_explain.cli`."""

import sys

from lit_explain.cli import main

if __name__ == "__main__":
    sys.exit(main())
