"""The six medical VQA benchmarks of the paper's Table 3 (PMC-VQA, MMMU medical, MedXpertQA-MM,
PathVQA, SLAKE, VQA-RAD) as lmms-eval tasks, read from MedVLThinker's evaluation set."""
