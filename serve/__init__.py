"""The Ray Serve HTTP application: readings, AQI and forecasts over HTTP, and a
built-in offline dashboard (``/ui/``).

* :mod:`serve.app` — ``build_app(args)``, the application builder (KubeRay
  ``import_path: serve.app:build_app``);
* :mod:`serve.api` — the FastAPI ingress deployment and its routes;
* :mod:`serve.forecaster` — model multiplexing and batched inference on a cache miss;
* :mod:`serve.refresher` — recomputes every sensor's forecast on a schedule;
* :mod:`serve.deploy` — deploy on a running cluster from the settings.
"""
