"""The package version, in one place (the package root re-exports it as __version__)."""

VERSION = "0.1.0"
