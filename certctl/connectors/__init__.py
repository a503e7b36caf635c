"""Connectors: one module per outside system (targets, discovery sources, ...) behind small interfaces.

They may use `certctl.domain` and `certctl.pki`, never the database (an import-linter contract).
"""
