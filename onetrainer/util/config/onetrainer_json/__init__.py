"""OneTrainer's JSON training configs, both ways: `onetrainer import`, `train CONFIG.json` and `export`.

The modules: `defaults` (OneTrainer's v11 defaults, as data in `defaults.json`, and how it overlays a
file on them), `migrations` (its `__version` steps), `tables` (enum values and how they map), the
`import_*` mappers and `importer` (OneTrainer -> our run config), the `export_*` mappers and
`exporter` (ours -> OneTrainer), `findings` (the account of every setting neither side can hold) and
`load` (what the commands call).
"""
