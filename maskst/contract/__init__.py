"""The neutral contract every other layer builds on: IO specs, the one comparator, wire formats, file hashing."""
