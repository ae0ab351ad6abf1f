"""
Persistence. Services import only `store.interfaces`; `runtime` picks the backend.
"""
