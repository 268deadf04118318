"""``python -m tests.plugins.run_with_fakes ARGS``: the bench CLI with the fake test methods registered."""

import sys

from tests.plugins.fake_methods import register_fakes

if __name__ == "__main__":
    register_fakes()
    from bench.cli import main

    sys.exit(main(sys.argv[1:]))
