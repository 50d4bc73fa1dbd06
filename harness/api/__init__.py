"""The contract a plugin author reads, and the helpers tasks and mixers share; imports nothing else
of lcbench. Architectures implement :mod:`~harness.api.interface` and register with
:mod:`~harness.api.registry`; tasks implement :mod:`~harness.api.task` and return rows of
:mod:`~harness.api.results`."""
