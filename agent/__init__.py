"""The NGINX Manager Agent: the program the launcher keeps up to date.

It knows nothing about updates. It reports its build-time version, serves a health
endpoint, looks at the local nginx and stops cleanly on SIGTERM or SIGINT. Standard
library only: the built artifact runs under the system ``python3``.
"""
