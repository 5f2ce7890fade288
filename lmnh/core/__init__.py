"""The pure core: no I/O, no service; what the daemon judges and encodes."""
