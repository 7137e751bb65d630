"""atomgen.eval."""
