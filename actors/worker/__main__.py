"""`python -m actors.worker`: the worker process (see `actors.worker.main`)."""

import sys

from actors.worker.main import main

sys.exit(main())
