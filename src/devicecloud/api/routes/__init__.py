"""
One router per API group.
"""
