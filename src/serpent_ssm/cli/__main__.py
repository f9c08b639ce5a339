"""``python -m serpent_ssm.cli`` (as under ``torchrun``): the ``serpent`` command."""

import sys

from serpent_ssm.cli import main

if __name__ == "__main__":  # not on a plain import (tests import every module)
    sys.exit(main())
