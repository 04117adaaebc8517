"""Offline reports on what the job wrote: re-identification risk and DP releases, and their HTML page.

The command line's ``risk`` command uses them; the job does not, so they are not shipped to workers.
"""
