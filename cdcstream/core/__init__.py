"""Events, config models, settings, secret references, routing and counter names.

The bottom layer: imports nothing else from cdcstream, and no framework."""
