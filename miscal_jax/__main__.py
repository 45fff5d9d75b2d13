import sys

from miscal_jax.app.cli import main

sys.exit(main())
