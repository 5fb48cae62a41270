"""``python -m surgegate.cli``: the `surgegate` command."""

import sys

from surgegate.cli import main

sys.exit(main())
