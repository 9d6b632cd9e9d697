"""Reporting: tidy result cells (``results``), paper-shaped tables and figures."""
