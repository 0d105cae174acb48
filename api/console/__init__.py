"""The operator console: /console, served by the API process (see views.py)."""
