"""The PyFlink processing job (Flink virtualenv): see :mod:`flink.job`.

:mod:`flink.transforms` and :mod:`flink.config` import no PyFlink (unit-tested in either
virtualenv); :mod:`flink.functions` and :mod:`flink.topology` are the PyFlink shells.
"""
