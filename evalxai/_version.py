"""The package version, in a module of its own: modules inside evalxai read it from here, not from the package
``evalxai`` (whose ``__init__`` imports the API, and through it most of the package)."""
__version__ = "0.1.0"
