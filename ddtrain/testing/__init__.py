"""Tools for testing ddtrain where a real cluster is out of reach."""
