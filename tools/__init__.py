"""Scripts run by hand to maintain the book (see each module's docstring)."""
