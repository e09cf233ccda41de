"""`python -m bitsmith.app [--model SOURCE]`: open the workbench window."""

import sys

from .main import main

sys.exit(main())
