"""`make bench`: speed and memory of the two scheduled jobs, written as figures (see bench/run.py)."""
