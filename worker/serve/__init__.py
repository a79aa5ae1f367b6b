"""The worker's HTTP side: ``server`` (a bounded GET-only server), ``telemetry`` (``/metrics``,
``/healthz``, ``/readyz``) and ``dashboard`` (``/`` and ``/api/report`` over the metric buckets).
Routes are pure functions of the query string; only ``server`` touches sockets.
"""
