"""The client SDK: what users' training and serving code imports to read the features the operator built.

- :mod:`mlinfra.client.connections`: finding the stores (mounted connection Secret, dict, Kubernetes API, URL).
"""
