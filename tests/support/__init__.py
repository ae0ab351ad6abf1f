"""
Shared test helpers: a controllable clock, factories, a recording notifier, a live server.
"""
