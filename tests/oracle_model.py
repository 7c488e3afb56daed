"""An lmms-eval model used only by the tests: it answers each item correctly with a known,
seeded probability p, so Acc@1 and Pass@K have known expected values (p and 1-(1-p)^K).
Its reasoning text is fixed, so two samples differ only when their answers do: a confident
oracle (p = 0.99) repeats one response on most items, as no real reasoning model would.
``ignore_temperature=true`` makes it a sampler that ignores the temperature (every sample greedy).

It is registered by ``run_lmms_eval.py`` in the test's own subprocess, never by the package.
Rank-aware (harness_ext/backend/distributed.py): under torchrun / accelerate launch each process
answers its shard, and every answer depends only on (seed, task, document, sample index), so a
two-process run gives a one-process run's answers.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

from lmms_eval.api.model import lmms
from medbridge.harness_ext.backend.distributed import DataParallel


class OracleModel(DataParallel, lmms):
    is_simple = True

    def __init__(self, p: float = 0.5, seed: int = 0, ignore_temperature: bool = False, **kwargs) -> None:
        super().__init__()
        self.setup_data_parallel("cpu")
        self.p = float(p)
        self.seed = int(seed)
        # A sampler that ignores the temperature (a server decoding with a checkpoint's top_k=1): every
        # sample is the item's greedy answer, whatever the task asks.
        self.ignore_temperature = str(ignore_temperature).lower() in ("1", "true", "yes")
        self._drawn = defaultdict(int)  # samples already drawn per (task, doc)

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            _ctx, gen_kwargs, _visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            options, answer = json.loads(doc["options"]), doc["answer_letter"]
            if float(gen_kwargs.get("temperature") or 0) > 0 and not self.ignore_temperature:
                # Independent draws per sample: each of the K samples is right with probability p.
                key = f"{self.seed}:{task}:{doc_id}:{self._drawn[(task, doc_id)]}"
                self._drawn[(task, doc_id)] += 1
            else:
                # Greedy decoding is deterministic per item.
                key = f"{self.seed}:{doc['item_id']}:greedy"
            rng = random.Random(key)
            correct = rng.random() < self.p
            letter = answer if correct else rng.choice([x for x in options if x != answer])
            out.append(f"<think>Looking at the image, option {letter} fits best.</think><answer>{letter}</answer>")
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("the oracle model only generates")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the oracle model only generates")
