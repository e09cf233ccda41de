"""Entry point of the frozen worker program `bitsmith-worker RUN_DIR [--resume]`, and
`bitsmith-worker --cli ARGS` for the command line (the window's pre-flight estimate runs
`bitsmith run JOB --dry-run --json` this way).

A frozen app's `sys.executable` is the app itself, so the window cannot start the worker
with `python -m`; `bitsmith.core.client.worker_command` finds this program beside it.
"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["--cli"]:
        from bitsmith.core.cli import main as cli_main

        sys.exit(cli_main(sys.argv[2:]))
    from bitsmith.core.worker import main

    sys.exit(main())
