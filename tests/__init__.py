"""The epop test suite, run by trial."""
