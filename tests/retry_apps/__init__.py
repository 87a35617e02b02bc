"""Small retry apps for the retry tests: modules whose import registers handlers."""
