"""GRPO / GRPO-CARE and SFT training (TRL). Importing the package loads nothing heavy."""

from pathlib import Path

# The recipe files shipped with the package (the leaderboard's verdicts point to them).
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
