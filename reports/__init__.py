"""Turning stored results into tables and figures (installed as ``bench.reports``); never trains anything."""
