"""Where change events end up: the Elasticsearch mirror and the object-store archive."""
