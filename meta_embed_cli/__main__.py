"""`python -m meta_embed_cli`: the `meta-embed` command."""

import sys

from meta_embed_cli.main import main

sys.exit(main())
