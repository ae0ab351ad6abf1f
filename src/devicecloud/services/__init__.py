"""
Business rules, one module per domain. Collaborators (store, clock, notifier...) arrive through constructors.
"""
