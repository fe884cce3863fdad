"""The studies wing: experiments built from extraction and estimators.

Lexical semantics by layer (WiC), pooling studies, vocabulary-defined semantics and
calibration, information emergence, steering curves.
"""
