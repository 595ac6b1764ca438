"""Serve a saved policy over HTTP (``dyninfer serve POLICY_DIR``; extra ``dyninfer[serve]``) or on Ray Serve
(``--ray``; extra ``dyninfer[ray]``).

* :mod:`~dyninfer.serve.service` — the framework-free core: the policy's runtime behind a dynamic batcher
  with a bounded queue, the knob and its calibrated curve, windowed statistics, image decoding.
* :mod:`~dyninfer.serve.controller` — the latency-target controller that moves the knob along the
  calibrated curve as load rises and falls.
* :mod:`~dyninfer.serve.app` — the FastAPI application (endpoints, errors as 4xx JSON, Prometheus
  metrics, the web page).
* :mod:`~dyninfer.serve.ray_app` — the same policy as Ray Serve deployments.

The web server modules import FastAPI and prometheus-client; nothing here is imported by ``import dyninfer``.
"""
