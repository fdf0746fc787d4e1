"""The admin HTTP API: merchant ERP data, reports, provisioning, metrics."""
