"""Thales payShield host commands: codec, pooled async client, software HSM."""
