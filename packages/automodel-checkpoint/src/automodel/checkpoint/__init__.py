"""automodel.checkpoint."""
