"""The medical VQA benchmarks of the paper's Table 3 (catalog.py) as lmms-eval tasks, read from
MedVLThinker's evaluation set."""
