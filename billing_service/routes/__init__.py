"""The HTTP layer: one module per resource, each route parses, calls one service, serializes."""
