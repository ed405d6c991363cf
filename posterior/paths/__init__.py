"""Reference (noising) processes and target path measures log Q(tau | y)."""
