"""Deployment target connectors: one module per target kind, behind `base.TargetConnector`.

`registry` maps the API's target type strings to classes; the server calls `validate_config` to store
configs with their defaults applied, and the agent builds connectors with its deploy engine.
"""
