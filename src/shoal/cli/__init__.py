"""The ``shoal`` command line: the click group ``shoal.cli.main:main``.

Nothing is imported here, so ``python -m shoal.cli.main`` runs cleanly.
"""
