import sys

from miscal_jax.cli import main

sys.exit(main())
