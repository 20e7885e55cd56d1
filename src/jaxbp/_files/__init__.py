"""Files: checkpoints, data tables and IDX images, each read back checked."""
