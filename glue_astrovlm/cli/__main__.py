"""``python -m glue_astrovlm.cli``: the ``astrovlm`` command."""

import sys

from . import main

sys.exit(main())
