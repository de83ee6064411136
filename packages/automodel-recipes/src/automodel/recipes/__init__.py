"""automodel.recipes."""
