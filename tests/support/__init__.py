"""Helpers the test modules share; not tests themselves."""
