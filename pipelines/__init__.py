"""atomgen.pipelines."""
