"""Controllers: they see observations and return actions."""
