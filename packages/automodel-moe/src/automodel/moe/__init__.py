"""automodel.moe."""
