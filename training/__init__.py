"""Forecasting on Ray Train: per-(sensor, measure) recurrent models, their registry
entries and the inference contract Serve uses (:mod:`training.predict`).

Modules: ``model`` (Keras network, fitting one series, what is served), ``pretrain``
(the per-measure pre-training tasks whose weights start every fine-tune), ``loop`` (the
Ray Train worker loop: a shard of series per worker, checkpoints after every slot),
``trainer`` (the pre-training, then the Ray Train run), ``register`` (promotion rules),
``data`` (series from InfluxDB), ``job`` (the ``ray job submit`` entry point),
``predict`` (load and predict).
"""
