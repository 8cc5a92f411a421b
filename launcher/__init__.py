"""nginx-manager-launcher: keeps one host's agent up to date and alive."""
