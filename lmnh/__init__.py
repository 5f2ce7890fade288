"""The LMNH kiosk pipeline's package (README "What is in the repository")."""
