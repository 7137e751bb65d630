"""The experiment configs that ship with atomgen: ``atomgen train digits-ddpm`` finds them by name."""
