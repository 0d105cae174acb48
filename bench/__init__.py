"""`make bench`: eventpipe against a bare Starlette ceiling and a one-job-per-event RQ peer.

A script that prints figures (bench/run.py), not a test: nothing here asserts anything.
"""
