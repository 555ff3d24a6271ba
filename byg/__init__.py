"""byg: Bootstrap Your Generator."""
