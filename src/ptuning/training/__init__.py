"""Training and evaluation wiring: a recipe in, a checkpoint and metrics.json out.

The transformers Trainer runs the optimization (progress bars, schedule, length-grouped batches); our callback
evaluates on validation each epoch with the task's own word-level scorer and keeps the best trainable state, so
checkpoints hold only the prompt and the head.

    run.py           train(recipe) -> metrics: the whole run, from reading the data to metrics.json
    run_folder.py    the run's folder: refusing to overwrite, resumable state, staging and moving into place
    data.py          one task of a run (TaskRun): its data read once, subsampled, labelled, its Task prepared
    build.py         the model a run trains: the backbone with a prompt and a head per task, or from a saved run
    trainer.py       the Trainer, its one-task batches, per-epoch validation, exact resume; make_trainer
    run_metrics.py   metrics.json: written in one shape, read in every shape it ever had
    distributed.py   which data-parallel process this is, and whether the replicas agree

Callers import from the modules (``from ptuning.training.run import train``): this file imports none of them.
"""
