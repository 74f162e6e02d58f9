"""Verification: generated bad inputs, fault injection, store faults, secret scans and the `make verify` table."""
