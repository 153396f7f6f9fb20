"""The command line: ``main`` is the root app; ``common`` holds what every command group shares."""
