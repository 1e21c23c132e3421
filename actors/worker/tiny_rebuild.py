"""`python -m actors.worker.tiny_rebuild OUT [VARIANT]`: rebuild a tiny build into OUT (same seed,
same bytes); VARIANT is t2v (tiny-wan, the default), i2v, a14b, a14b-i2v or ti2v.

Its own process because the builder imports torch, which the control process never loads.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from transformers.utils import logging as hf_logging

    # As `genvisor models make-tiny`: no note about torchvision's faster image processor.
    hf_logging.set_verbosity_error()
    from actors.worker.tiny_variants import TinyVariant, build_tiny_variant

    variant = TinyVariant(argv[1]) if len(argv) > 1 else TinyVariant.T2V
    build_tiny_variant(Path(argv[0]), variant, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
