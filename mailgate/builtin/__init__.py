"""Built-in plugins: mailgate's own behaviours, on the same hooks users get."""
