"""An example recipe package: `automodel zloss llm`, built on automodel.recipes' shared parts."""
