"""Adapters: each module speaks to one outside service (SNS, HTTP, a file)."""
