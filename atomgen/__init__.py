"""atomgen."""
