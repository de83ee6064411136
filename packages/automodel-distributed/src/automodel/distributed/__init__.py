"""automodel.distributed."""
