"""`python -m bench.litellm_compare`."""

from bench.litellm_compare.cli import main

raise SystemExit(main())
