"""One actor per enrolled device, the challenge supervisor, and their supervision."""
