"""Test support that runs inside a real daemon process (fault injection): loaded only through
the one switch in daemon/test_support.py, never imported by the product otherwise."""
