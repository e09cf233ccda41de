"""Entry point of the frozen worker program `bitsmith-worker RUN_DIR [--resume]`.

A frozen app's `sys.executable` is the app itself, so the window cannot start the worker
with `python -m`; `bitsmith.core.client.worker_command` finds this program beside it.
"""

import sys

from bitsmith.core.worker import main

if __name__ == "__main__":
    sys.exit(main())
