"""train.py overrides shared by the tests that train (tests/test_train.py, test_determinism.py,
test_interrupted_runs.py); each adds its data sizes, head, step count and seed."""

# A random tiny14 backbone on the CPU (trainer=cpu: deterministic), data in the main process, every
# step logged, no sanity validation, no test split, no progress bar.
QUIET_TINY_RUN = [
    "backbone=tiny14",
    "trainer=cpu",
    "data.num_workers=0",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "test=false",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
]

# 16 synthetic training scenes of 28×28 in batches of 4 (4 steps an epoch), 4 validation and 4 test scenes.
SCENES_28 = [
    "data.image_size=[28,28]",
    "data.num_train=16",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=4",
]
