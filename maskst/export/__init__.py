"""Exporters: one module per network (its IO spec and torch module), the export driver and parity."""
