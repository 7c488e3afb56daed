"""Package discovery for the fixed repository layout (metadata lives in pyproject.toml).

Each top-level folder keeps its job visible (tasks/, harness_ext/, judges/, training/,
leaderboard/, tests/) and installs under the single import name `medbridge`, so no generic
top-level name such as `tasks` or `training` is ever installed.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "medbridge": "medbridge",
    "medbridge.tasks": "tasks",
    "medbridge.harness_ext": "harness_ext",
    "medbridge.judges": "judges",
    "medbridge.training": "training",
    "medbridge.leaderboard": "leaderboard",
    "medbridge.tests": "tests",
}

packages = []
for package, folder in FOLDERS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=FOLDERS,
    # Task YAMLs and their data pointer files, recipes, launch configs and prompt templates.
    # One level of plain data folders too (tasks/medmnist/data_pointers/, recipes/, accelerate/, ...).
    package_data={"": [f"{folder}*.{ext}" for folder in ("", "*/")
                       for ext in ("yaml", "yml", "jsonl", "json", "sh", "txt", "jinja")]},
)
