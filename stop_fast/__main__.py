"""``python -m stop_fast``: the same as the ``stop-fast`` command."""
import sys

from stop_fast.cli import main

sys.exit(main())
