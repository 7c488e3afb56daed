"""Serving and checking the LLM judge: ``medbridge judge serve`` / ``medbridge judge check`` (cli.py)
and the vLLM server helpers (server.py). The judge itself (prompts, client, cache, cascade) is
``medbridge.harness_ext.judge``; this package imports it, never the reverse."""
