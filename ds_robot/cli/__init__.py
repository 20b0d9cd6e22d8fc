"""The ``ds-robot`` command line."""
