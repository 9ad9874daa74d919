"""The DataStore layer: apply a store's desired state, observe the live system, compute its status.

No Kopf here: ``mlinfra.handlers.datastore`` calls these functions and writes what they return.
"""
