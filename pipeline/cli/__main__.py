"""``python -m cola_moderation.pipeline.cli`` = the ``cola`` console script."""

import sys

from cola_moderation.pipeline.cli.main import main

sys.exit(main())
