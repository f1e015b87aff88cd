"""`python -m api.cli` runs the command line (the tests call it this way, as the `ddpm-guard` script does)."""

import sys

from ddpm_guard.api.cli import main

sys.exit(main())
