"""The LLM judge's side of the product: its prompts (prompts.yaml: the texts and the project's one
modality vocabulary), serving and checking it (``medbridge judge serve`` / ``medbridge judge check``,
cli.py) and the vLLM server helpers (server.py). The judge client, cache and cascade that lmms-eval
loads are ``medbridge.harness_ext.judge``, which reads prompts.yaml as data and imports nothing from here."""
