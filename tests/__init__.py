"""The test suite (pytest); tests/support holds the helpers its modules share."""
