"""The fuzz suite: malformed and hostile inputs (see conftest.py for the sandbox and process guard)."""
