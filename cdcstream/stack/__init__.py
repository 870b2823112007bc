"""The real local stack: servers started natively from package registries."""
