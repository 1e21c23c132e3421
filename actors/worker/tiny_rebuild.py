"""`python -m actors.worker.tiny_rebuild OUT`: rebuild tiny-wan into OUT (same seed, same bytes).

Its own process because the builder imports torch, which the control process never loads.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from actors.worker.tiny_wan import build_tiny_wan

    build_tiny_wan(Path(argv[0]), overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
