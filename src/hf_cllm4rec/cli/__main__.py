"""`python -m hf_cllm4rec.cli`."""

import sys

from . import main

sys.exit(main())
