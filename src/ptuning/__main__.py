"""``python -m ptuning``: the command line (torchrun and accelerate launch modules this way)."""

from .cli import main

raise SystemExit(main())
