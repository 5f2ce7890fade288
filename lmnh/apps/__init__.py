"""Entry points besides pipeline.py: each imports only the core and the services."""
