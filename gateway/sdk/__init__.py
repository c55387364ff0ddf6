"""The Python clients: one set of resources (``resources``, ``admin``) over a backend that is
the engine in-process (``local``: ``Gateway``, ``AsyncGateway``) or a running gateway over
HTTP (``remote``: ``GatewayClient``, ``AsyncGatewayClient``, with ``protocol`` saying what is
sent and how answers are read). Import the clients from ``gateway``; a remote client loads
no engine."""
