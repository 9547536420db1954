"""vggflow: Value Gradient Guidance for flow-matching alignment, and its baselines, as a benchmark.

The package knows nothing about Snakemake: every command reads one resolved config file and writes
only the paths it is given (see ``python -m vggflow --help``). Importing it is cheap; torch is
imported by the modules that need it.
"""

__version__ = "0.1.0"
