"""The estimators wing: everything learned from states, one scikit-learn contract.

Directions, probes, the learned attention pooler, the semantic calibrator and the
mutual-information estimators are all :class:`sklearn.base.BaseEstimator` subclasses:
hyper-parameters in ``__init__``, learning in ``fit``, learned attributes end in ``_``,
:class:`sklearn.exceptions.NotFittedError` before ``fit``, and :func:`sklearn.base.clone` works.
"""
