"""One module of exercises per lab: ``labNN_<slug>.py`` with ``NOTEBOOK`` and ``EXERCISES``."""
