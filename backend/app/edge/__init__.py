"""The HTTP edge: what every request passes through before and after its view.

request_context (request id, trace and log context, the one after-request hook that sends `request_finished`),
ingress (ProxyFix and the URL and header limits: 414, 431), request_metrics (the performance.log line),
rate_limits (+ rate_limit_storage, rejection_log: 429s and rejected tokens logged in aggregate), validation
(JSON bodies and query strings: 400, 415, 422), idempotency (`Idempotency-Key` replay), routing (id converters),
openapi (`@documented` and the document built from the URL map).
It imports only base, log, errors, resilience and signals below it, never monitoring or a blueprint: monitoring
hears about requests through `signals.request_finished`. Blueprints import it; the factory wires it.

Layer: edge (tests/unit/test_layers.py); it imports only what is said above, all from layers below.
"""
