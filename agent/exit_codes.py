"""The exit-code contract between the agent and the launcher.

=====  ===================  =====================================================
code   name                 meaning
=====  ===================  =====================================================
0      ``STOPPED``          stopped on request (SIGTERM or SIGINT)
1      ``FAILURE``          unexpected failure (a bug, an unhandled error)
2      ``USAGE_ERROR``      bad command-line arguments
3      ``STARTUP_FAILURE``  could not start, e.g. cannot bind the health address
=====  ===================  =====================================================

How the launcher reads them: any exit of the agent during the health window of an update
is a failed trial (the build is rolled back and recorded as bad), whatever the code. Outside
the window any exit it did not ask for is a crash, and the agent is restarted with backoff.
Codes 2 and 3 mean that retrying the same build with the same arguments will not help (a bad
argument or an address held by someone else), but the launcher still retries with backoff:
the address may be freed, and an operator may fix the configuration meanwhile.
"""

STOPPED = 0
FAILURE = 1
USAGE_ERROR = 2
STARTUP_FAILURE = 3
