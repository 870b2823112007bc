"""The framework-free data path: decode, branch by profile, chunk, embed, buffer the archive.

Imports ``core`` and the sink contracts; unit-tested with plain data."""
