"""Stage 3 of jungle: level-2 gradient-boosting stacker and batch prediction."""
