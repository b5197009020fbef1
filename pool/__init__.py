"""Stage 2 of jungle: level-1 meta-models trained on the stage-1 feature store."""
