"""``python -m sandbox [flags]``: the fake NewOaks API (see ``--help``)."""

import sys

from sandbox.server import main

sys.exit(main())
