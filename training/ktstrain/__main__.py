"""``python -m ktstrain`` (and ``torchrun --nproc_per_node=N -m ktstrain train ...``)."""
import sys

from .cli import main

sys.exit(main())
