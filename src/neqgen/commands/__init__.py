"""The steps of the pipeline, each a function of the composed config."""
