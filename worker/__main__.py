"""``python -m worker`` is the ``trace-curator`` command."""

import sys

from worker.cli import main

sys.exit(main())
