"""Report writers: Markdown tables, PNG plots, JSON, written into a folder atomically."""

from .tables import markdown_table

__all__ = ["markdown_table"]
