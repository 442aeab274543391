"""``python -m oaksend.sandbox [flags]``: the fake NewOaks API (see ``--help``)."""

import sys

from oaksend.sandbox.server import main

sys.exit(main())
