"""What a sweep prints when it ends: the top trials, the champion, and where to look in MLflow."""

from __future__ import annotations

from gltr_platform.tune.sweep import SweepOutcome

COLUMNS = [
    "trial",
    "dilations",
    "seq_len",
    "attention_width",
    "epochs_run",
    "best_val_mAP",
    "val_rank1",
    "test_mAP",
]


def print_summary(outcome: SweepOutcome, top: int = 10) -> None:
    """Top trials by best validation mAP, the registered champion, and the MLflow UI command."""
    table = outcome.table
    stopped = int(table["stopped_early"].sum()) if len(table) else 0
    print(f"\nSweep {outcome.name}: {len(table)} trials, {stopped} stopped early by ASHA")
    if len(table):
        shown = table[[c for c in COLUMNS if c in table.columns]].head(top)
        print(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if outcome.best is None:
        print("\nNo trial finished, so no model was registered.")
    else:
        b = outcome.best
        print(
            f"\nBest configuration: dilations=({b['dilations']}) seq_len={b['seq_len']} "
            f"attention_width={b['attention_width']}: val mAP {b['best_val_mAP']:.3f}, "
            f"test mAP {b['test_mAP']:.3f}"
        )
        print(f"Registered as models:/{outcome.champion_name}@champion (version {outcome.champion_version})")
    store = outcome.tracking_uri
    ui = f"mlflow ui --backend-store-uri {store}" if not store.startswith("http") else f"open {store}"
    print(f"\nMLflow: experiment '{outcome.experiment}', parent run {outcome.parent_run_id}\n  {ui}")
    print(f"Optuna study '{outcome.study_name}': optuna-dashboard {outcome.study_storage}")
