"""Metrics (Prometheus) and traces (OpenTelemetry) for every layer.

It sits just above `certctl.domain` in the layer contract so that the store (database transaction spans),
connectors, services, the scheduler and the API can all record into it; it imports nothing of ours.
"""
