"""The Kohya backend: sd-scripts (pinned commit, own venv) driven as a child process.

Modules: `flags` (recorded flag list and dataset schema, `data/`), `models` (base-model files and what their
headers say), `venv` (find and check the install), `args` (dataset.toml, config.toml, argv), `progress` (the
output parser), `diagnose` (failure causes with fixes), `backend` (`KohyaBackend`).
"""
