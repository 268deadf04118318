"""A plugin module that calls sys.exit while being imported (tests that it breaks only itself)."""

import sys

sys.exit(3)
