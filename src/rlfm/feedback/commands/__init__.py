"""The ``rlfm label ...`` commands: one module each, a ``Config`` and the function it runs."""
