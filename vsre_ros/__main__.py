"""`python -m vsre_ros` is the `vsre` command."""

import sys

from vsre_ros.cli import main

sys.exit(main())
