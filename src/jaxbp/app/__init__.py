"""The `jaxbp` application: the command line and what it runs, a client of the public API.

- `cli`: `jaxbp train | check | bench`, one top-level handler for every failure.
- `settings`: `Settings`, `jaxbp train`'s flags resolved once into a frozen value.
- `job`: `prepare(settings) -> Job`, data, model, optimizer and the held `--out` folder.
- `train`: the training loop, its logs, checkpoints, summary and figures.
- `check_table`, `bench`: `jaxbp check` and `jaxbp bench`.
- `plots`: matplotlib figures (`pyplot()`, `training_curves`, `backward_flow`).
"""
