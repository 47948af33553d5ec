"""The florence-patch command line: thin typer wiring over the library."""
