"""Built-in execution backends (installed as ``flowcore.backends``).

One module per backend. Each module implements the ``flowcore_backends`` hook and
imports its heavy dependency inside the factory, so importing the module is cheap.
"""
