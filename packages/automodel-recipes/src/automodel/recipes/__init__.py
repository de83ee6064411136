"""End-to-end training recipes, registered in the entry-point group `automodel.recipes`.

Importing this package is cheap: each recipe module is imported only when run.
"""
