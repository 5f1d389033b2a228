"""How continuous prompts enter a frozen model."""
