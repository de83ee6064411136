"""automodel.core."""
