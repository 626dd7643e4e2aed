"""The session's Prefect test server, ``prefect_harness``, lives in tests/conftest.py (the
reliability tests share it)."""
