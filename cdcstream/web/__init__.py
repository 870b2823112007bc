"""The worker's web site and API: views, status, metrics, pages, OpenAPI, search, and the
client the CLI uses to talk to it."""
