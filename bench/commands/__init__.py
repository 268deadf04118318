"""CLI verbs beyond the core ones (run, list, report, card): one module per verb.

Each module defines ``add_parser(subparsers)`` — which must call ``set_defaults(handler=run)`` —
and ``run(args) -> int``, and is listed in ``bench.cli.EXTRA_VERBS``. Import heavy libraries
inside ``run`` so that ``bench --help`` stays instant.
"""
