"""Data: the toy world and edit-tuple datasets."""
