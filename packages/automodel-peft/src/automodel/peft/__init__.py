"""automodel.peft."""
