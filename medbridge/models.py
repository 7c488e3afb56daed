"""The lmms-eval model backends medbridge registers (what `medbridge models` prints).

lmms-eval 0.7.3's own `lmms-eval models` lists its built-in backends only; ours arrive through the
``lmms_eval.models`` entry point, so this reads the same entry point lmms-eval loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "lmms_eval.models"
DISTRIBUTION = "medbridge"


@dataclass(frozen=True)
class RegisteredModel:
    model_id: str  # the name for `lmms-eval --model`
    class_path: str
    kind: str  # "chat" or "simple": which lmms-eval interface the class implements


def registered_models() -> list[RegisteredModel]:
    """Every model manifest medbridge's entry point hands lmms-eval (test-only models live in tests/)."""
    found: list[RegisteredModel] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.dist is None or point.dist.name != DISTRIBUTION:
            continue
        for manifest in point.load()():
            for kind in ("chat", "simple"):
                class_path = getattr(manifest, f"{kind}_class_path", None)
                if class_path:
                    found.append(RegisteredModel(manifest.model_id, class_path, kind))
    return sorted(found, key=lambda m: (m.model_id, m.kind))
