"""A local method file with two Method subclasses: --methods must name one."""

from bench.api import Method


class First(Method):
    name = "first-local"


class Second(Method):
    name = "bt"  # clashes with an installed method
