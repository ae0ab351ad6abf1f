"""
Domain value objects: frozen dataclasses, stdlib only.
"""
