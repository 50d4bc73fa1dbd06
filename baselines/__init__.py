"""Architectures on the shared backbone; each module registers itself with harness.api.registry."""
