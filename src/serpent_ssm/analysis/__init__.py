"""Analysis: are selective intervals linear approximators of information? (issue 8; in progress)."""
