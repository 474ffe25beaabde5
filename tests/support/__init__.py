"""Helpers shared by the test trees: real servers and processes started as fixtures."""
