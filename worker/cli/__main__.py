"""`python -m oaksend.worker.cli`: the `oaksend` command."""

import sys

from oaksend.worker.cli import main

sys.exit(main())
