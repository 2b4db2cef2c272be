"""Sample data shipped with the package: `recipients.csv` is what `campaign demo` imports."""
